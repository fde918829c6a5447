"""Running passes in order.

A pass is any callable that takes a ``GraphModule`` and returns torch.fx's
``PassResult(graph_module, modified)`` — fxprune's own passes subclass torch.fx's ``PassBase``,
so user passes written for torch.fx compose with them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune.errors import FxpruneError

Pass = Callable[[fx.GraphModule], PassResult]

__all__ = ["Pass", "PassBase", "PassManager", "PassResult"]


def pass_name(graph_pass: Pass) -> str:
    return getattr(graph_pass, "__name__", None) or type(graph_pass).__name__


class PassManager:
    """Runs ``passes`` in order, up to ``max_rounds`` times or until none modifies the graph.

    After each modifying pass the graph is linted and recompiled. An error names the pass that
    raised it and the passes that ran before; a user-input error keeps its type.
    """

    def __init__(self, passes: Sequence[Pass], max_rounds: int = 1, constraints=()):  # SHIM
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.passes = list(passes)
        self.max_rounds = max_rounds

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified_any = False
        history: list[str] = []
        for _ in range(self.max_rounds):
            modified_round = False
            for graph_pass in self.passes:
                name = pass_name(graph_pass)
                try:
                    result = graph_pass(gm)
                except Exception as error:
                    context = f"pass {name} failed (after: {', '.join(history) or 'none'}): {error}"
                    if isinstance(error, FxpruneError):
                        raise type(error)(context) from error
                    raise RuntimeError(context) from error
                if not isinstance(result, PassResult):
                    raise TypeError(f"pass {name} returned {type(result).__name__}, "
                                    "expected torch.fx PassResult(graph_module, modified)")
                history.append(name)
                gm = result.graph_module
                if result.modified:
                    gm.graph.lint()
                    gm.recompile()
                modified_round |= result.modified
            modified_any |= modified_round
            if not modified_round:
                break
        return PassResult(gm, modified_any)


def this_before_that(a, b):  # SHIM
    return (a, b)

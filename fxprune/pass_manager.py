"""Running passes in order.

A pass is any callable that takes a ``GraphModule`` and returns torch.fx's
``PassResult(graph_module, modified)`` — fxprune's own passes subclass torch.fx's ``PassBase``,
so user passes written for torch.fx compose with them unchanged. Calling a ``PassBase`` runs
its ``requires`` (a pass refuses there, before changing anything), ``call`` and ``ensures``.

Ordering constraints follow torch.fx's ``this_before_that_pass_constraint``: a constraint is a
function ``(earlier, later) -> bool`` of two passes of the list, false when they may not run in
that order; ``this_before_that`` builds one from two pass types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune.errors import FxpruneError
from fxprune.meta import has_tensor_meta, value_type

Pass = Callable[[fx.GraphModule], PassResult]
Constraint = Callable[[Pass, Pass], bool]

__all__ = ["Constraint", "Pass", "PassBase", "PassManager", "PassResult", "this_before_that"]


def pass_name(graph_pass: Pass) -> str:
    return getattr(graph_pass, "__name__", None) or type(graph_pass).__name__


def this_before_that(this: type, that: type) -> Constraint:
    """A constraint: no pass of type ``that`` runs before one of type ``this``."""

    def allowed(earlier: Pass, later: Pass) -> bool:
        return not (isinstance(earlier, that) and isinstance(later, this))

    return allowed


class PassManager:
    """Runs ``passes`` in order, up to ``max_rounds`` times (``None``: until a round changes
    nothing; each pass must then stop changing the graph at some point) or until none
    modifies the graph.

    ``constraints`` are checked when the manager is built: a violation raises ``ValueError``
    naming both passes. After each modifying pass the graph is linted and recompiled, and, when
    the graph carried shapes before the pass, every node that calls something must still carry
    them (``tensor_meta``, or the value type for a non-tensor result): a pass that adds nodes
    refreshes shapes. An error names the pass that raised it and the passes that ran before;
    a user-input error keeps its type.
    """

    def __init__(self, passes: Sequence[Pass], max_rounds: int | None = 1,
                 constraints: Sequence[Constraint] = ()):
        if max_rounds is not None and max_rounds < 1:
            raise ValueError("max_rounds must be at least 1 (or None: until nothing changes)")
        self.passes = list(passes)
        self.max_rounds = max_rounds
        self.constraints = list(constraints)
        self._check_order()

    def _check_order(self) -> None:
        for constraint in self.constraints:
            for index, earlier in enumerate(self.passes):
                for later in self.passes[index + 1:]:
                    if not constraint(earlier, later):
                        raise ValueError(f"pass order: {pass_name(later)} must run before "
                                         f"{pass_name(earlier)}, not after it")

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified_any = False
        history: list[str] = []
        rounds = 0
        while self.max_rounds is None or rounds < self.max_rounds:
            rounds += 1
            modified_round = False
            for graph_pass in self.passes:
                gm, modified = self._run(graph_pass, gm, history)
                modified_round |= modified
            modified_any |= modified_round
            if not modified_round:
                break
        return PassResult(gm, modified_any)

    @staticmethod
    def _run(graph_pass: Pass, gm: fx.GraphModule, history: list[str]
             ) -> tuple[fx.GraphModule, bool]:
        name = pass_name(graph_pass)
        had_shapes = _carries_shapes(gm)
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
            if had_shapes:
                _require_shapes(gm, name)
        return gm, result.modified


def _carries_shapes(gm: fx.GraphModule) -> bool:
    """Shape propagation ran on the graph (its inputs carry shapes)."""
    return any(node.op == "placeholder" and has_tensor_meta(node) for node in gm.graph.nodes)


def _require_shapes(gm: fx.GraphModule, name: str) -> None:
    for node in gm.graph.nodes:
        if node.op.startswith("call_") and not has_tensor_meta(node) and \
                value_type(node) is None:
            raise RuntimeError(f"pass {name} left node '{node.name}' without shape metadata "
                               "(tensor_meta); a pass that adds nodes must refresh shapes")

"""Fitting a few parameters of a segment so its outputs match fixed targets (MSE).

Everything else in the segment stays frozen; the data are the tiny set's cached segment inputs
and teacher features, so one step costs one forward and backward pass of the segment only.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from fxprune.segments import as_list


# Images per Adam step of the default recovery (and of the brief one that scores blocks).
RECOVERY_BATCH = 32


@dataclass(frozen=True)
class FitConfig:
    """How adapters are trained. The paper (v1): Adam, lr 1e-4, batch 64, up to 1000 epochs,
    stop once the loss has not improved for 10 epochs. ``max_steps`` bounds the optimizer steps
    whatever the set size, which keeps large tiny sets affordable on a CPU."""

    lr: float = 1e-4
    # A weight reading more inputs than this trains at lr * reference_width / inputs: Adam
    # moves every entry by about lr, so a map's output moves by about lr * inputs per step
    # (EfficientNet-Lite0's 192-wide adapters diverged at the rate that suits 64-wide ones).
    # None: one rate for all.
    reference_width: int | None = 64
    batch_size: int = 64
    epochs: int = 1000
    max_steps: int | None = None
    patience: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.patience < 1 or \
                (self.reference_width is not None and self.reference_width < 1):
            raise ValueError(f"invalid fit configuration {self}")


@contextmanager
def channels_last(*modules: nn.Module):
    """Inside, the modules' 4-D parameters and buffers are channels-last (NHWC in memory):
    CPU convolutions train about a fifth faster that way. After, they are contiguous again,
    so the rest of the pipeline (folding, export) sees ordinary tensors."""
    for module in modules:
        module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for module in modules:
            module.to(memory_format=torch.contiguous_format)


def set_batchnorm_training(module: nn.Module, training: bool) -> None:
    """Eval mode everywhere, except BN layers in train mode when ``training`` (batch
    statistics in the forward pass, running statistics updated)."""
    module.eval()
    if training:
        for child in module.modules():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                child.train()


def mse(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over outputs of the mean squared error."""
    return sum(torch.nn.functional.mse_loss(output, target)
               for output, target in zip(outputs, targets))


@contextmanager
def trainable(module: nn.Module, parameters: Sequence[nn.Parameter]):
    """Inside: only ``parameters`` require grad. After: every flag of ``module``'s parameters
    is what it was before."""
    everything = list(module.parameters()) + [p for p in parameters]
    flags = [p.requires_grad for p in everything]
    for parameter in everything:
        parameter.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        for parameter, flag in zip(everything, flags):
            parameter.requires_grad_(flag)


Pairs = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]  # (inputs, targets)


def fit(module: nn.Module, parameters: Sequence[nn.Parameter], inputs: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor], config: FitConfig, description: str = "fit",
        progress: bool = True, validation: Pairs | None = None) -> list[float]:
    """Adam on ``parameters`` of ``module`` so that ``module(*inputs)`` matches ``targets``.

    Minibatches are drawn without replacement per epoch from a generator seeded by
    ``config.seed``; at most ``config.max_steps`` optimizer steps run. The parameters (and
    ``module``'s buffers, such as BN statistics in train mode) end as they were at the start
    of the epoch with the lowest training loss — the start of the first epoch included, so
    training never ends worse than it began. With ``validation`` (inputs and targets never
    trained on), the loss on those pairs judges instead, measured at the start of every epoch
    and after the last: training never ends worse *on them* than it began, and stops once they
    have not improved for ``config.patience`` epochs. Returns the training loss of every
    epoch."""
    if validation is not None and any(child.training for child in module.modules()
                                      if isinstance(child, nn.modules.batchnorm._BatchNorm)):
        raise ValueError("validation runs forward passes that a BN layer in train mode would "
                         "learn its running statistics from; put BN in eval mode")
    with trainable(module, parameters):
        return _run(module, list(parameters), inputs, targets, config, description, progress,
                    validation)


def _rate(parameter: torch.Tensor, config: FitConfig) -> float:
    """``config.lr``, scaled down for a weight wider than ``config.reference_width``."""
    inputs = parameter[0].numel() if parameter.dim() > 1 else 1
    if config.reference_width is None or inputs <= config.reference_width:
        return config.lr
    return config.lr * config.reference_width / inputs


def _snapshot(parameters, buffers) -> list[torch.Tensor]:
    return [tensor.detach().clone() for tensor in (*parameters, *buffers)]


def _validation_loss(module, validation: Pairs, batch_size: int) -> float:
    inputs, targets = validation
    count, total = len(inputs[0]), 0.0
    with torch.no_grad():
        for begin in range(0, count, batch_size):
            part = slice(begin, begin + batch_size)
            outputs = as_list(module(*(x[part] for x in inputs)))
            total += mse(outputs, [t[part] for t in targets]).item() * len(inputs[0][part])
    return total / count


def _run(module, parameters, inputs, targets, config, description, progress, validation
         ) -> list[float]:
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam([{"params": [parameter], "lr": _rate(parameter, config)}
                                  for parameter in parameters])
    buffers = list(module.buffers())
    count = len(inputs[0])
    steps_left = config.max_steps if config.max_steps is not None else float("inf")
    best_loss, best_state, since_best = float("inf"), None, 0
    history: list[float] = []
    bar = tqdm(range(config.epochs), desc=description, leave=False, disable=not progress or None)
    for _ in bar:
        if steps_left <= 0:
            break
        # The epoch's loss is measured along the way, mostly with these starting values.
        start_state = _snapshot(parameters, buffers)
        judged = None if validation is None else \
            _validation_loss(module, validation, config.batch_size)
        order = torch.randperm(count, generator=generator)
        total, seen = 0.0, 0
        for begin in range(0, count, config.batch_size):
            if steps_left <= 0:
                break
            index = order[begin:begin + config.batch_size]
            loss = mse(as_list(module(*(x[index] for x in inputs))), [t[index] for t in targets])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps_left -= 1
            total, seen = total + loss.item() * len(index), seen + len(index)
        history.append(total / seen)
        bar.set_postfix(loss=f"{history[-1]:.4g}")
        judged = history[-1] if judged is None else judged
        if judged < best_loss:
            best_loss, best_state, since_best = judged, start_state, 0
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    if validation is not None and \
            _validation_loss(module, validation, config.batch_size) < best_loss:
        best_state = None  # the state after the last epoch is the best: keep it
    if best_state is not None:
        with torch.no_grad():
            for tensor, value in zip((*parameters, *buffers), best_state):
                tensor.copy_(value)
    return history

"""Fitting a few parameters of a segment so its outputs match fixed targets (MSE).

Everything else in the segment stays frozen; the data are the tiny set's cached segment inputs
and teacher features, so one step costs one forward and backward pass of the segment only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class FitConfig:
    """How adapters are trained. The paper (v1): Adam, lr 1e-4, batch 64, up to 1000 epochs,
    stop once the loss has not improved for 10 epochs. ``max_steps`` bounds the optimizer steps
    whatever the set size, which keeps large tiny sets affordable on a CPU."""

    lr: float = 1e-4
    batch_size: int = 64
    epochs: int = 1000
    max_steps: int | None = None
    patience: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError(f"invalid fit configuration {self}")


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


def _as_list(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def fit(module: nn.Module, parameters: Sequence[nn.Parameter], inputs: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor], config: FitConfig, description: str = "fit",
        progress: bool = True) -> list[float]:
    """Adam on ``parameters`` of ``module`` so that ``module(*inputs)`` matches ``targets``.

    Minibatches are drawn without replacement per epoch from a generator seeded by
    ``config.seed``. The parameters end at the epoch with the lowest training loss. Returns the
    loss of every epoch."""
    frozen = [p for p in module.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    try:
        return _run(module, list(parameters), inputs, targets, config, description, progress)
    finally:
        for parameter in parameters:
            parameter.requires_grad_(False)
        for parameter in frozen:
            parameter.requires_grad_(True)


def _run(module, parameters, inputs, targets, config, description, progress) -> list[float]:
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    count = len(inputs[0])
    steps_per_epoch = -(-count // config.batch_size)
    epochs = config.epochs
    if config.max_steps is not None:
        epochs = max(1, min(epochs, config.max_steps // steps_per_epoch))
    best_loss, best_state, since_best = float("inf"), None, 0
    history: list[float] = []
    bar = tqdm(range(epochs), desc=description, leave=False, disable=not progress or None)
    for _ in bar:
        order = torch.randperm(count, generator=generator)
        total = 0.0
        for start in range(0, count, config.batch_size):
            index = order[start:start + config.batch_size]
            loss = mse(_as_list(module(*(x[index] for x in inputs))), [t[index] for t in targets])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        history.append(total / count)
        bar.set_postfix(loss=f"{history[-1]:.4g}")
        if history[-1] < best_loss:
            best_loss, since_best = history[-1], 0
            best_state = [p.detach().clone() for p in parameters]
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    with torch.no_grad():
        for parameter, value in zip(parameters, best_state):
            parameter.copy_(value)
    return history

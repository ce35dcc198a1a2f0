"""Inner-loop optimizers: how one gradient step moves a task's fast weights.

Each is a small immutable object in the shape of TorchOpt's: `init(params)` gives its state, and
`update(params, grads, state)` gives the new weights and state. The updates are plain tensor expressions,
so the same object serves the task-by-task loop, `torch.func.vmap` over tasks, and second-order
differentiation through the steps. A learned rule (Meta-SGD) holds its learning rates as tensors that the
outer loop trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Params = dict[str, torch.Tensor]
LR_PREFIX = "inner_lr."  # a learned rule's rate for parameter `p` is the algorithm's tensor `inner_lr.p`


@dataclass(frozen=True)
class SGD:
    lr: float
    learned: Params = field(default_factory=dict)  # tensors the outer loop trains: none for a fixed rule

    def init(self, params: Params) -> Any:
        return None

    def update(self, params: Params, grads: Params, state: Any) -> tuple[Params, Any]:
        return {n: params[n] - self.lr * g for n, g in grads.items()}, state


@dataclass(frozen=True)
class Adam:
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    learned: Params = field(default_factory=dict)

    def init(self, params: Params) -> tuple[int, Params, Params]:
        zeros = {n: torch.zeros_like(p) for n, p in params.items()}
        return 0, zeros, dict(zeros)  # the step, the first and the second moments

    def update(self, params: Params, grads: Params, state: tuple[int, Params, Params]) -> tuple[Params, Any]:
        """Adam's bias-corrected step."""
        step, m, v = state
        step, (b1, b2) = step + 1, self.betas
        m = {n: b1 * m[n] + (1 - b1) * g for n, g in grads.items()}
        v = {n: b2 * v[n] + (1 - b2) * g * g for n, g in grads.items()}
        new = {
            n: params[n] - self.lr * (m[n] / (1 - b1**step)) / ((v[n] / (1 - b2**step)).sqrt() + self.eps)
            for n in grads
        }
        return new, (step, m, v)


@dataclass(frozen=True)
class LearnedSGD:
    """theta' = theta - alpha * grad with `lrs` (alpha) a tensor per parameter, elementwise (Meta-SGD, Li et al.,
    2017); gradients reach `lrs` through every step when the inner loop is differentiated."""

    lrs: Params

    @property
    def learned(self) -> Params:
        return self.lrs

    def init(self, params: Params) -> Any:
        return None

    def update(self, params: Params, grads: Params, state: Any) -> tuple[Params, Any]:
        return {n: params[n] - self.lrs[n] * g for n, g in grads.items()}, state


@dataclass(frozen=True)
class PerStepSGD:
    """theta_{k+1} = theta_k - lrs[name][k] * grad at inner step k (the last rate serves any further steps, as
    when evaluation adapts longer than meta-training did)."""

    lrs: Params  # one rate per inner step for each parameter tensor (MAML++'s LSLR)

    @property
    def learned(self) -> Params:
        return self.lrs

    def init(self, params: Params) -> int:
        return 0

    def update(self, params: Params, grads: Params, step: int) -> tuple[Params, int]:
        return {n: params[n] - self.lrs[n][min(step, len(self.lrs[n]) - 1)] * g for n, g in grads.items()}, step + 1


INNER_OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def gradient_steps(
    optimizer,
    params: Params,
    loss_of: Callable[[Params], torch.Tensor],
    steps: int,
    create_graph: bool,
) -> tuple[Params, list[float]]:
    """`steps` steps of `optimizer` on `loss_of(params)` (the support loss); differentiable through every step
    iff `create_graph`, else the weights are detached leaves after every step (no graph builds up across steps).
    Returns the adapted weights and each step's loss."""
    names = list(params)
    if not create_graph:
        params = {n: p.detach().requires_grad_() for n, p in params.items()}
    state, losses = optimizer.init(params), []
    for _ in range(steps):
        loss = loss_of(params)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
        losses.append(loss.item())
        params, state = optimizer.update(params, dict(zip(names, grads)), state)
        if not create_graph:
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
    return params, losses

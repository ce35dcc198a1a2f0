"""Pieces for running a meta-batch's inner loops as one batched computation (`torch.func.vmap` over tasks).

The maths is `Algorithm.inner_loop` with SGD over every parameter, written with `torch.func.grad` so that
it runs per task under `vmap` and differentiates again under an enclosing `torch.func.grad` (second order).
On a GPU the tasks' small products fuse into large ones; tests/test_gradients.py checks the results equal
the task-by-task path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from metarun.algorithms.base import Algorithm, Params, TaskStats
from metarun.algorithms.heads import HEAD, starting_head
from metarun.episodes import Episode
from metarun.torch_workarounds import twice_differentiable_attention, vmap_safe_layer_norm


def stack_episodes(episodes: list[Episode]) -> tuple[torch.Tensor, ...]:
    """[tasks, ...] support tokens, support labels, query tokens, query labels; tokens padded to one width."""

    def stack(rows: list[torch.Tensor]) -> torch.Tensor:
        width = max(r.shape[-1] for r in rows)
        return torch.stack([F.pad(r, (0, width - r.shape[-1])) for r in rows])

    return tuple(stack([getattr(e, k) for e in episodes]) for k in ("support_x", "support_y", "query_x", "query_y"))


def task_start(algorithm: Algorithm, params: Params, support_x, support_y) -> Params:
    """Per-task starting weights inside vmap: the head as `algorithm.head_init` says (random: drawn per task)."""
    features = lambda: algorithm.logits(params, support_x, features_only=True)  # noqa: E731
    head = starting_head(algorithm.head_init, params, features, support_y, algorithm.prototype_scale)
    return params if head is None else {**params, HEAD[0]: head[0], HEAD[1]: head[1]}


def sgd_steps(algorithm: Algorithm, params: Params, tokens, labels, steps: int) -> tuple[Params, torch.Tensor]:
    """`steps` SGD steps on one task; second order comes for free under an enclosing `torch.func.grad`."""
    state, losses = algorithm.inner_optimizer.init(params), []
    for _ in range(steps):
        grads, loss = grad_and_value(lambda p: algorithm.objective.loss(algorithm.logits(p, tokens), labels))(params)
        params, state = algorithm.inner_optimizer.update(params, grads, state)
        losses.append(loss)
    return params, torch.stack(losses) if losses else torch.zeros(0)


def over_tasks(task_fn: Callable, episodes: list[Episode], *shared):
    """Run `task_fn(*shared, support_x, support_y, query_x, query_y)` for every episode at once."""
    # the math attention kernel: the fused CPU kernels have no batching rule (vmap would loop over tasks)
    with vmap_safe_layer_norm(), twice_differentiable_attention():
        return vmap(task_fn, in_dims=(*(None for _ in shared), 0, 0, 0, 0), randomness="different")(
            *shared, *stack_episodes(episodes)
        )


def task_stats(
    algorithm: Algorithm, params: Params, query_logits: torch.Tensor, inner_losses: torch.Tensor, episodes
) -> list[TaskStats]:
    """Each task's stats from the batched results, as the task-by-task path reports them."""
    return [
        algorithm.query_stats(params, logits, episode, losses.tolist())
        for logits, losses, episode in zip(query_logits.detach(), inner_losses.detach(), episodes)
    ]

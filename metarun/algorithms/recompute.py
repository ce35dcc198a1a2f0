"""Memory-light second-order inner steps: keep each step's weights, recompute its graph in the backward pass.

A differentiable SGD step theta' = theta - lr * g(theta) needs, going backward, v -> v - lr * H(theta) v.
Plain MAML keeps every step's activations and gradient graph alive until the meta-backward; here each step
keeps only theta and rebuilds its graph when the meta-backward reaches it, so memory stays at one
step's graph plus one set of weights per step (activation checkpointing through the inner loop).
Forward and recomputation both use the math attention kernel, so dropout draws the same masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from metarun.torch_workarounds import twice_differentiable_attention

LossFn = Callable[[list[torch.Tensor]], torch.Tensor]


class RecomputedSGDStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss_fn: LossFn, lr: float, *params: torch.Tensor):
        ctx.loss_fn, ctx.lr = loss_fn, lr
        ctx.devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
        ctx.cpu_rng = torch.get_rng_state()  # dropout must draw the same masks when recomputed
        ctx.cuda_rng = [torch.cuda.get_rng_state(d) for d in ctx.devices]
        with torch.enable_grad(), twice_differentiable_attention():  # the kernel the backward replays
            leaves = [p.detach().requires_grad_() for p in params]
            loss = loss_fn(leaves)
            grads = torch.autograd.grad(loss, leaves)
        ctx.save_for_backward(*params)
        loss = loss.detach()
        ctx.mark_non_differentiable(loss)
        return (loss, *(p.detach() - lr * g for p, g in zip(params, grads)))

    @staticmethod
    @once_differentiable  # v - lr*Hv is exact for one backward; differentiating it again would be silently wrong
    def backward(ctx, _loss_grad, *upstream: torch.Tensor):
        with torch.random.fork_rng(devices=ctx.devices):
            torch.set_rng_state(ctx.cpu_rng)
            for device, state in zip(ctx.devices, ctx.cuda_rng):
                torch.cuda.set_rng_state(state, device)
            with torch.enable_grad(), twice_differentiable_attention():
                leaves = [p.detach().requires_grad_() for p in ctx.saved_tensors]
                grads = torch.autograd.grad(ctx.loss_fn(leaves), leaves, create_graph=True)
                hessian_vector = torch.autograd.grad(grads, leaves, grad_outputs=upstream, allow_unused=True)
        return (
            None,
            None,
            *(v if hv is None else v - ctx.lr * hv for v, hv in zip(upstream, hessian_vector)),
        )


def recomputed_sgd_step(
    loss_fn: LossFn, lr: float, params: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One SGD step, differentiable to second order, that stores only `params`; returns (loss, new params)."""
    loss, *updated = RecomputedSGDStep.apply(loss_fn, lr, *params)
    return loss, updated


def recomputed_sgd_steps(
    support_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    lr: float,
    params: dict[str, torch.Tensor],
    steps: int,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """`steps` such steps on `support_loss(weights)`; returns the adapted weights and each step's loss."""
    names, values, losses = list(params), list(params.values()), []
    for _ in range(steps):
        loss, values = recomputed_sgd_step(lambda weights: support_loss(dict(zip(names, weights))), lr, values)
        losses.append(loss.item())
    return dict(zip(names, values)), losses

"""Where torch 2.13 needs help, in one place: each workaround names the defect it avoids.

docs/design.md explains them, and tests/test_gradients.py keeps the evidence that they are still needed."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def twice_differentiable_attention() -> contextlib.AbstractContextManager:
    """Pick SDPA's math kernel: the fused CPU flash kernel has no double backward, and under `vmap` the fused
    kernels have no batching rule (vmap would loop over tasks)."""
    return sdpa_kernel([SDPBackend.MATH])


_written_out_layer_norm = False


@contextlib.contextmanager
def vmap_safe_layer_norm():
    """Inside, metarun's `LayerNorm` is written out in elementary ops: under `torch.func.vmap`, torch 2.13
    differentiates the fused layer_norm twice wrongly."""
    global _written_out_layer_norm
    previous, _written_out_layer_norm = _written_out_layer_norm, True
    try:
        yield
    finally:
        _written_out_layer_norm = previous


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm`, written out in elementary ops inside `vmap_safe_layer_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _written_out_layer_norm:
            return super().forward(x)
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).square().mean(-1, keepdim=True)
        return (x - mean) * torch.rsqrt(variance + self.eps) * self.weight + self.bias

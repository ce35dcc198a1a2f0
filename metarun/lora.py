"""LoRA adapters (Hu et al., 2021) on a model's linear layers: W x + b + (alpha / rank) * B A x.

A [rank, in] is drawn as peft draws it and B [out, rank] starts at zero, so a model with adapters starts as the
model without them. A wrapped layer keeps its own parameter names (`weight`, `bias`) and adds `lora_a` and
`lora_b`, so pretrained weights and checkpoints load as before and the `lora` scopes find the adapters by name
(`metarun.algorithms.scopes`). Models call `add_lora` at the end of their constructor (`model.lora_rank`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metarun.errors import UserError

ADAPTERS = ("lora_a", "lora_b")  # the last part of every adapter parameter's name


def is_adapter(name: str) -> bool:
    return name.rpartition(".")[2] in ADAPTERS


class LoRALinear(nn.Linear):
    """`base`'s weight and bias (the same tensors) plus a rank-`rank` update scaled by alpha / rank."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        nn.Module.__init__(self)  # not nn.Linear's, which would draw a new weight: `base`'s is kept
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **like))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # peft's draw (nn.Linear's own)
        self.rank, self.scaling = rank, alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # scaled at rank width: scaling the output would keep a full-width gradient per layer in a second-order graph
        return super().forward(x) + F.linear(F.linear(x, self.lora_a) * self.scaling, self.lora_b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


def adapted_layers(model: nn.Module, layers: int | None) -> list[str]:
    """The module-name prefixes of the top `layers` encoder layers (None: all of them)."""
    prefixes = model.layer_prefixes()
    if layers is None:
        return prefixes
    if not 1 <= layers <= len(prefixes):
        raise UserError(
            f"model.lora_layers={layers} is not valid for a model with {len(prefixes)} layers; use 1 to "
            f"{len(prefixes)} (the top layers that get adapters), or null for all of them."
        )
    return prefixes[-layers:]


def add_lora(model: nn.Module, rank: int, alpha: float, layers: int | None = None,
             targets: Sequence[str] | None = None) -> list[str]:  # fmt: skip
    """Wrap in `LoRALinear` every linear layer inside the top `layers` encoder layers (None: all) whose module name
    ends in one of `targets` (None: every one); the names of the wrapped modules. Rank 0 adds nothing."""
    if rank == 0:
        return []
    prefixes = tuple(adapted_layers(model, layers))
    linear = [name for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name.startswith(prefixes)]  # fmt: skip
    endings = None if targets is None else tuple(f".{t}" for t in targets)
    chosen = [name for name in linear if endings is None or name.endswith(endings)]
    if not chosen:
        examples = sorted({name.removeprefix(prefix) for name in linear for prefix in prefixes
                           if name.startswith(prefix)})  # fmt: skip
        raise UserError(
            f"model.lora_targets={list(targets or [])} names none of the linear layers to adapt; give endings of "
            f"their names (within a layer: {', '.join(examples)}), or null for all of them."
        )
    for name in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(model.get_submodule(name), rank, alpha))
    return chosen


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s weights with every adapter folded into the weight it adapts (W + alpha / rank * B A) and the adapters
    left out: what a library without LoRA loads and computes alike (metarun-export)."""
    state = {name: tensor.detach() for name, tensor in model.state_dict().items() if not is_adapter(name)}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            key = f"{name}.weight" if name else "weight"
            state[key] = state[key] + module.scaling * (module.lora_b @ module.lora_a).detach()
    return state

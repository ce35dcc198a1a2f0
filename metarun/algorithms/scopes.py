"""Which parameters a scope covers (what adapts per task, what meta-training updates), and the outer optimizer's
parameter groups: the heads may get their own rate."""

from __future__ import annotations

import torch
from torch import nn

from metarun.algorithms.heads import HEAD
from metarun.errors import UserError
from metarun.lora import is_adapter

# every parameter | the top `top_layers` encoder layers and all above | the head | the LoRA adapters (metarun.lora)
# and the head | both "lora" and "top"
SCOPES = ("all", "top", "head", "lora", "lora_top")


def scope_names(model: nn.Module, scope: str, top_layers: int, asked_by: str) -> list[str]:
    """The parameter names a scope covers, in the model's order; `asked_by` is the setting that names it (for a
    refusal). "top" starts at the first of the top `top_layers` layers and keeps everything registered after it (a
    final norm, the head, those layers' adapters)."""
    names = [n for n, _ in model.named_parameters()]
    if scope == "all":
        return names
    if scope == "head":
        return list(HEAD)
    if scope == "top":
        return top_names(model, names, top_layers)
    if not any(is_adapter(n) for n in names):
        raise UserError(
            f"{asked_by}={scope} adapts the model's LoRA adapters, but it has none (model.lora_rank=0). Give it "
            f"adapters with model.lora_rank=8 (any rank of at least 1; model.lora_layers=k puts them in the top k "
            f"layers only), or use {asked_by}=all, top or head."
        )
    kept = set(HEAD) | (set(top_names(model, names, top_layers)) if scope == "lora_top" else set())
    return [n for n in names if is_adapter(n) or n in kept]


def top_names(model: nn.Module, names: list[str], top_layers: int) -> list[str]:
    """`names` from the first parameter of the top `top_layers` layers on (from the head when 0)."""
    layers = model.layer_prefixes()
    if not 0 <= top_layers <= len(layers):
        raise UserError(
            f"algo.top_layers={top_layers} is not valid for a model with {len(layers)} layers; use 0 to {len(layers)}."
        )
    if top_layers == 0:
        first = names.index(HEAD[0])
    else:
        first = next(i for i, n in enumerate(names) if n.startswith(layers[-top_layers]))
    return names[first:]


def above_pooling(model: nn.Module) -> set[str]:
    """The parameters that run on the pooled encoder output: the head and the decision layer."""
    return {n for n, _ in model.named_parameters() if n in HEAD or n.startswith("decision.")}


def untouched_layers(model: nn.Module, changing: set[str]) -> int:
    """How many of the model's bottom layers (with the embeddings below them) no name in `changing` is in."""
    names = [n for n, _ in model.named_parameters()]
    lowest = min(names.index(n) for n in changing if n in names)
    ends = [max(i for i, n in enumerate(names) if n.startswith(prefix)) for prefix in model.layer_prefixes()]
    return sum(1 for end in ends if end < lowest)  # 0 when an embedding changes: it comes first


def outer_parameter_groups(trained: dict[str, torch.Tensor], heads: set[str], head_lr: float | None) -> list[dict]:
    """Everything at the optimizer's own rate, or with `head_lr` the `heads` apart, so that a fresh head can move
    faster than pretrained layers."""
    heads = heads if head_lr is not None else set()
    groups = [{"params": [p for n, p in trained.items() if n not in heads]}]
    if heads:
        groups.append({"params": [p for n, p in trained.items() if n in heads], "lr": head_lr})
    return groups

"""Transformer encoder classifier: token + position embeddings, pre-LN layers, masked mean pooling, linear head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from metarun.lora import add_lora
from metarun.schema import schema, setting
from metarun.tokenizer import BPETokenizerConfig
from metarun.tokens import PAD_ID, swap_padding
from metarun.torch_workarounds import LayerNorm


@dataclass
class ModelConfig:
    """A model, and in `tokenizer` the recipe of its tokenizer (built first: the model is sized by it)."""

    _target_: str = MISSING
    tokenizer: Any = MISSING
    max_len: int = setting(32, least=2)  # tokens per text; longer texts are truncated
    # LoRA adapters on the encoder's linear layers (metarun.lora), which algo.inner_scope=lora adapts; 0: none
    lora_rank: int = setting(0, least=0)
    lora_alpha: float = setting(16.0, above=0.0)  # the update is scaled by lora_alpha / lora_rank
    lora_layers: Optional[int] = setting(None, least=1)  # adapters in the top lora_layers layers only; null: all
    lora_targets: Optional[List[str]] = None  # endings of the linear layers' names, e.g. [query,value]; null: all
    # a ReLU layer this wide between the pooled features and the head (MeLU's decision layers); 0: none. It belongs to
    # the scope algo.inner_scope=top (and outer_scope) with algo.top_layers=0, with the head
    decision_width: int = setting(0, least=0)


@schema("model", "transformer")
@dataclass
class TransformerConfig(ModelConfig):
    _target_: str = "metarun.model.TransformerClassifier"
    tokenizer: BPETokenizerConfig = field(default_factory=BPETokenizerConfig)
    d_model: int = setting(64, least=1)
    n_layers: int = setting(2, least=1)
    n_heads: int = setting(4, least=1)
    d_ff: int = setting(128, least=1)
    dropout: float = setting(0.0, least=0.0, below=1.0)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(attended.transpose(1, 2).reshape(batch, length, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm, self.ff_norm = LayerNorm(d_model), LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), keep))
        return x + self.drop(self.ff(self.ff_norm(x)))


class EncoderClassifier(nn.Module):
    """What every metarun model is: a linear `head` over `features(tokens)` (through a `decision` layer where there is
    one), whose layers can also run from (or stop at) a layer, for the caches of `metarun.features`. Subclasses give
    `features` and `hidden_states`."""

    def add_decision_layer(self, width: int) -> None:
        """A ReLU layer `width` wide between the features and the head (nothing for 0); registered after the head, so
        that the scope from the head on (algo.top_layers=0) holds both."""
        self.decision = nn.Identity()
        if width:
            self.decision = nn.Sequential(nn.Linear(self.head.in_features, width), nn.ReLU())
            self.head = nn.Linear(width, self.head.out_features)  # keeps its place among the modules

    def forward(
        self,
        tokens: torch.Tensor,
        features_only: bool = False,
        hidden: torch.Tensor | None = None,
        from_layer: int = 0,
        until_layer: int | None = None,
        pooled_only: bool = False,
    ) -> torch.Tensor:
        """Logits (or features); from cached `hidden` states after `from_layer` layers; or what a cache keeps (see
        `metarun.features`): with `until_layer` the hidden states, with `pooled_only` the pooled output below the
        decision layer."""
        if until_layer is not None:
            return self.hidden_states(tokens, until_layer)
        features = self.features(tokens, hidden, from_layer)
        if pooled_only:
            return features
        features = self.decision(features)
        return features if features_only else self.head(features)


class TransformerClassifier(EncoderClassifier):
    """Sized by its tokenizer: `vocab_size` ids, padded with `pad_id` (token tensors arrive padded with `PAD_ID`);
    every other size is given (the schema, `TransformerConfig`, holds their defaults)."""

    batches_tasks = True  # its forward runs under torch.func.vmap (algo.batch_tasks)
    prefers_bf16 = False  # device.precision=auto: float32

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ff: int,
        max_len: int,
        dropout: float,
        pad_id: int = PAD_ID,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_layers: int | None = None,
        lora_targets: list[str] | None = None,
        decision_width: int = 0,
    ) -> None:
        super().__init__()
        self.max_len, self.pad_id = max_len, pad_id
        self.token_embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.position_embedding = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.final_norm = LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, n_classes)
        self.add_decision_layer(decision_width)
        add_lora(self, lora_rank, lora_alpha, lora_layers, lora_targets)  # drawn last: the rest is as without

    def layer_prefixes(self) -> list[str]:
        """Parameter-name prefixes of the encoder's layers, bottom to top."""
        return [f"layers.{i}." for i in range(len(self.layers))]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.drop(self.token_embedding(swap_padding(tokens, self.pad_id)) + self.position_embedding(positions))

    def run_layers(self, x: torch.Tensor, tokens: torch.Tensor, start: int = 0, stop: int | None = None):
        keep = tokens != PAD_ID
        for layer in list(self.layers)[start:stop]:  # a slice of the list, not a new ModuleList (higher patches it)
            x = layer(x, keep)
        return x

    def hidden_states(self, tokens: torch.Tensor, layers: int) -> torch.Tensor:
        """[rows, length, d_model] after the first `layers` layers (0: the embeddings): what a cache may keep."""
        return self.run_layers(self.embed(tokens), tokens, 0, layers)

    def features(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None, from_layer: int = 0) -> torch.Tensor:
        """Masked mean of the final hidden states: one [d_model] vector per sequence; given `hidden`, the states
        after the first `from_layer` layers, only the layers above run."""
        x = self.run_layers(self.embed(tokens) if hidden is None else hidden, tokens, from_layer)
        x = self.final_norm(x)
        weights = (tokens != PAD_ID).unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)

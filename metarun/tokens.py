"""Token tensors as metarun passes them around: [rows, length] ids padded with `PAD_ID` on the right.

Every tokenizer's padding id is swapped to `PAD_ID` when texts are encoded, and back when a pretrained model
reads them, so everything in between (episodes, models, feature caches) knows one convention."""

from __future__ import annotations

import torch

PAD_ID = 0


def swap_padding(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Exchange ids `PAD_ID` and `pad_id` (its own inverse): metarun pads with `PAD_ID`, a model with its own id."""
    if pad_id == PAD_ID:
        return tokens
    return torch.where(tokens == PAD_ID, pad_id, torch.where(tokens == pad_id, PAD_ID, tokens))


def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Drop padding columns that every row has, so attention runs over the batch's real length."""
    length = int((tokens != PAD_ID).sum(1).max())
    return tokens[:, : max(length, 1)]

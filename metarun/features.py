"""What the encoder computes for a text that training or adaptation leaves unchanged, computed once per text.

With a frozen encoder that is the pooled feature vector; with its lower layers frozen (`algo.outer_scope=top` and a
head or top-layer inner loop) it is the hidden states below the lowest trained layer, and only the layers above run
again. An `Algorithm` reads a table through `metarun.algorithms.caching`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metarun.tokens import PAD_ID, text_key, trim_padding


def unique_rows(token_batches: list[torch.Tensor]) -> torch.Tensor:
    """The distinct token rows of several [rows, width] batches (padded to one width)."""
    width = max(t.shape[1] for t in token_batches)
    return torch.unique(torch.cat([F.pad(t, (0, width - t.shape[1])) for t in token_batches]), dim=0)


def by_length(compute, tokens: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    """`compute(batch)` for every row of `tokens` without gradients, batched by length (shortest first) so that a
    batch is only as wide as its longest text; one result per row, in the rows' order."""
    order = torch.argsort((tokens != PAD_ID).sum(1), stable=True)
    found: list[torch.Tensor | None] = [None] * len(tokens)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            for row, value in zip(rows.tolist(), compute(trim_padding(tokens[rows]))):
                found[row] = value
    return found


class FeatureTable:
    """Each text's pooled features (`layers=None`) or its hidden states after the first `layers` layers (kept at
    the text's own length), for every row of `token_batches`, looked up by the text's tokens."""

    def __init__(self, algorithm, params, token_batches: list[torch.Tensor], layers: int | None = None):
        self.layers = layers
        rows = unique_rows(token_batches)
        if layers is None:
            values = by_length(lambda batch: algorithm.logits(params, batch, features_only=True), rows)
        else:
            values = by_length(lambda batch: algorithm.hidden_states(params, batch, layers), rows)
            values = [v[: int((row != PAD_ID).sum())] for v, row in zip(values, rows)]
        self.values = {text_key(row): v for row, v in zip(rows.cpu(), values)}

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        found = [self.values[text_key(row)] for row in tokens.cpu()]
        if self.layers is None:
            return torch.stack(found)
        return torch.stack([F.pad(v, (0, 0, 0, tokens.shape[1] - len(v))) for v in found])

"""What the encoder computes for a text that training or adaptation leaves unchanged, computed once per text.

With a frozen encoder that is the pooled feature vector; with its lower layers frozen (`algo.outer_scope=top` and a
head or top-layer inner loop) it is the hidden states below the lowest trained layer, and only the layers above run
again. An `Algorithm` reads a table through `metarun.algorithms.caching`; the values live in a file, in 16 bits and
each text only as long as it is, and a table later runs may read is kept for them (`metarun.feature_store`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from metarun.feature_store import Source, stored_values
from metarun.tokens import PAD_ID, trim_padding

Compute = Callable[[torch.Tensor], torch.Tensor]  # a batch of token rows -> one result per row
RECENT, RECENT_BYTES = 4, 1 << 22  # lookups a table remembers (a task's support and query sets), each at most 4 MiB


def unique_rows(token_batches: list[torch.Tensor]) -> torch.Tensor:
    """The distinct token rows of several [rows, width] batches (padded to one width)."""
    width = max(t.shape[1] for t in token_batches)
    return torch.unique(torch.cat([F.pad(t, (0, width - t.shape[1])) for t in token_batches]), dim=0)


def batches_by_length(compute: Compute, tokens: torch.Tensor, batch_size: int = 256,
                      ) -> Iterator[tuple[list[int], torch.Tensor]]:  # fmt: skip
    """`compute(batch)` without gradients for the rows of `tokens`, batched by length (shortest first) so that a
    batch is only as wide as its longest text: each batch's row numbers with its results."""
    order = torch.argsort((tokens != PAD_ID).sum(1), stable=True)
    without_grad = torch.no_grad()(compute)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows.tolist(), without_grad(trim_padding(tokens[rows]))  # no name here holds a batch into the next


def by_length(compute: Compute, tokens: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    """`batches_by_length`'s results, one per row, in the rows' order."""
    found: list[torch.Tensor | None] = [None] * len(tokens)
    for rows, values in batches_by_length(compute, tokens, batch_size):
        for row, value in zip(rows, values):
            found[row] = value
    return found


def text_keys(tokens: torch.Tensor) -> list[bytes]:
    """Each row's tokens without padding: the same text trimmed to different widths gives the same key."""
    return [row[row != PAD_ID].tobytes() for row in tokens.cpu().to(torch.int32).numpy()]


class FeatureTable:
    """`compute`'s results for every row of `token_batches`, looked up by the text's tokens: each text's features
    (`layers=None`; with `pooled`, the pooled encoder output below the model's decision layer), or its hidden states
    after the first `layers` layers, kept at the text's own length.
    With a `source` (what computes them, see `feature_store.Source`) the table is kept for later runs."""

    def __init__(self, compute: Compute, token_batches: list[torch.Tensor], layers: int | None = None,
                 source: Source | None = None, pooled: bool = False) -> None:  # fmt: skip
        self.layers = layers
        self.pooled = pooled  # `layers=None` values that are the pooled output below a decision layer
        rows = unique_rows(token_batches)
        self.rows = {key: i for i, key in enumerate(text_keys(rows))}
        lengths = [1] * len(rows) if layers is None else (rows != PAD_ID).sum(1).tolist()
        self.recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # the last RECENT lookups, newest first
        self.values = stored_values(lambda: batches_by_length(compute, rows), lengths, source, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        for asked, found in self.recent:  # an inner loop asks for the same support set at every step
            if asked is tokens:  # the very tensor, held here: it cannot have been freed and its memory reused
                return found
        rows = [self.rows[key] for key in text_keys(tokens)]
        found = self.values.read(rows, None if self.layers is None else tokens.shape[1]).to(tokens.device)
        if found.numel() * found.element_size() <= RECENT_BYTES:  # a task's sets, not a whole table read in turns
            self.recent = [(tokens, found), *self.recent[: RECENT - 1]]
        return found

"""An algorithm that reads what training or adaptation leaves unchanged from a table computed once per text
(`metarun.features.FeatureTable`): a frozen encoder's features, or the hidden states below the lowest changing layer."""

from __future__ import annotations

import copy

import torch

from metarun.algorithms.base import Algorithm, Params
from metarun.algorithms.heads import HEAD
from metarun.algorithms.scopes import untouched_layers
from metarun.features import FeatureTable


def cached(algorithm: Algorithm, params: Params, token_batches: list[torch.Tensor], changing: set[str]) -> Algorithm:
    """A copy of `algorithm` that reads, for the texts of `token_batches`, what changing only `changing` leaves alone
    from a table computed once (no dropout there); `algorithm` itself when every layer changes."""
    if changing <= set(HEAD):
        return reading_cache(algorithm, FeatureTable(algorithm, params, token_batches))
    layers = untouched_layers(algorithm.model, changing)
    return reading_cache(algorithm, FeatureTable(algorithm, params, token_batches, layers)) if layers else algorithm


def reading_cache(algorithm: Algorithm, table: FeatureTable) -> Algorithm:
    """A copy of `algorithm` whose `logits` start from `table`; `algorithm` itself is unchanged."""
    reader = copy.copy(algorithm)
    reader.cache, reader.batched = table, False  # a table lookup does not run under vmap
    return reader

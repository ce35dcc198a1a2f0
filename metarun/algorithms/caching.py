"""An algorithm that reads what training or adaptation leaves unchanged from a table computed once per text
(`metarun.features.FeatureTable`): a frozen encoder's features, or the hidden states below the lowest changing layer."""

from __future__ import annotations

import copy

import torch

from metarun.algorithms.base import Algorithm, Params
from metarun.algorithms.heads import HEAD
from metarun.algorithms.scopes import above_pooling, untouched_layers
from metarun.feature_store import Source, architecture
from metarun.features import FeatureTable


def cached(algorithm: Algorithm, params: Params, token_batches: list[torch.Tensor], changing: set[str],
           keep: bool = False) -> Algorithm:  # fmt: skip
    """A copy of `algorithm` that reads, for the texts of `token_batches`, what changing only `changing` leaves alone
    from a table computed once (no dropout there); `algorithm` itself when every layer changes. With `keep` the
    table is one later runs may read again (meta-training's, the meta-test's; not a validation's, whose weights
    change every time): it is kept in the feature cache folder, and read from there when it holds it."""
    # only the head, or the decision layer and head, change: the features, or the pooled output below the decision
    above = above_pooling(algorithm.model)
    pooled = changing <= above and not changing <= set(HEAD)
    layers = None if changing <= above else untouched_layers(algorithm.model, changing)
    if layers == 0:
        return algorithm
    if pooled:
        compute = lambda batch: algorithm.pooled_features(params, batch)  # noqa: E731
    elif layers is None:  # the encoder's own features, which ProtoNet's cosine normalises after reading, as it does
        compute = lambda batch: Algorithm.logits(algorithm, params, batch, features_only=True)  # noqa: E731
    else:
        compute = lambda batch: algorithm.hidden_states(params, batch, layers)  # noqa: E731
    source = table_source(algorithm, params, layers, pooled) if keep else None
    return reading_cache(algorithm, FeatureTable(compute, token_batches, layers, source, pooled))


def table_source(algorithm: Algorithm, params: Params, layers: int | None, pooled: bool = False) -> Source:
    """What computes a table's values, for its key: the weights of the encoder's frozen part (the embeddings and
    the first `layers` layers; for features, everything below the head; for pooled output, below the decision
    layer), the model's architecture and the autocast dtype."""
    names = [n for n, _ in algorithm.model.named_parameters()]
    if pooled:
        frozen = [n for n in names if n not in above_pooling(algorithm.model)]
    elif layers is None:
        frozen = [n for n in names if n not in HEAD]
    else:
        top = algorithm.model.layer_prefixes()[layers - 1]
        frozen = names[: max(i for i, n in enumerate(names) if n.startswith(top)) + 1]
    values = "pooled output" if pooled else "features" if layers is None else f"hidden states after {layers} layers"
    weights = {n: params[n] for n in frozen}
    return Source(values, architecture(algorithm.model), weights, str(algorithm.autocast_dtype))


def reading_cache(algorithm: Algorithm, table: FeatureTable) -> Algorithm:
    """A copy of `algorithm` whose `logits` start from `table`; `algorithm` itself is unchanged."""
    reader = copy.copy(algorithm)
    reader.cache, reader.batched = table, False  # a table lookup does not run under vmap
    return reader

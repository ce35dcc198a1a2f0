"""`metarun-predict` for a rating run (task=users): adapt to a new user's rated items, then predict their rating of
every candidate item, ranked best first, and show the top `top_k`."""

from __future__ import annotations

from omegaconf import DictConfig

from metarun.data.ratings import numbers, read_items
from metarun.progress import console
from metarun.trained import TrainedModel


def ranked_candidates(cfg: DictConfig, model: TrainedModel) -> list[dict]:
    """Every candidate with its predicted rating and rank, best first; the top `top_k` are shown."""
    data = model.config.data
    rated = {"rating_column": cfg.rating_column}
    _, support_texts, (raw,) = read_items(cfg.support, data.template, data.item_column, "support", rated)
    ratings = numbers(raw, cfg.rating_column, "support")
    ids, texts, _ = read_items(cfg.inputs, data.template, data.item_column, "inputs")
    rater = model.adapt_to_ratings(support_texts, ratings, seed=cfg.seed)
    console.print(f"adapted on {len(ratings)} rated items (mean rating {sum(ratings) / len(ratings):.2f})",
                  highlight=False)  # fmt: skip
    predicted = rater.predict(texts, cfg.batch_size)
    order = sorted(range(len(ids)), key=lambda i: -predicted[i])
    rows = [{"item": ids[i], "predicted_rating": predicted[i], "rank": rank} for rank, i in enumerate(order, start=1)]
    top = ", ".join(f"{r['item']} ({r['predicted_rating']:.2f})" for r in rows[: cfg.top_k])
    console.print(f"top {min(cfg.top_k, len(rows))}: {top}", highlight=False)
    return rows

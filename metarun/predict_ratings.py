"""`metarun-predict` for a rating run (task=users): adapt to a new user's rated items, then predict their rating of
every candidate item, written best first with its rank, and show the top `top_k`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from omegaconf import DictConfig

from metarun.data.files import read_columns
from metarun.data.ratings import item_text, template_fields
from metarun.errors import UserError
from metarun.progress import console
from metarun.run_folder import write_text_atomically
from metarun.trained import TrainedModel


def item_rows(file: str, model: TrainedModel, setting: str, rating_column: str | None = None
              ) -> tuple[list[str], list[str], list]:  # fmt: skip
    """Each row's item id, its text by the run's template, and its rating (with `rating_column`)."""
    data = model.config.data
    fields = template_fields(data.template)
    columns = {"item_column": data.item_column, **{f"template field {f!r}": f for f in fields}}
    if rating_column is not None:
        columns["rating_column"] = rating_column
    ids, *values = read_columns(file, columns, setting)
    ratings = values.pop() if rating_column is not None else []
    texts = [item_text(data.template, fields, [column[row] for column in values]) for row in range(len(ids))]
    return ids, texts, ratings


def predict_ratings(cfg: DictConfig, model: TrainedModel, out: Path) -> Path:
    support_ids, support_texts, raw = item_rows(cfg.support, model, "support", cfg.rating_column)
    try:
        ratings = [float(r) for r in raw]
    except (TypeError, ValueError):
        bad = next(r for r in raw if not _is_number(r))
        raise UserError(f"support={cfg.support}: {cfg.rating_column}={bad!r} is not a number; every rated item needs "
                        "a numeric rating (e.g. 1 to 5).") from None  # fmt: skip
    ids, texts, _ = item_rows(cfg.inputs, model, "inputs")
    rater = model.adapt_to_ratings(support_texts, ratings, seed=cfg.seed)
    console.print(f"adapted on {len(ratings)} rated items (mean rating {sum(ratings) / len(ratings):.2f})",
                  highlight=False)  # fmt: skip
    predicted = rater.predict(texts, cfg.batch_size)
    order = sorted(range(len(ids)), key=lambda i: -predicted[i])
    rows = [{"item": ids[i], "predicted_rating": predicted[i], "rank": rank} for rank, i in enumerate(order, start=1)]
    if out.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["item", "predicted_rating", "rank"])
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    write_text_atomically(out, text)
    top = ", ".join(f"{r['item']} ({r['predicted_rating']:.2f})" for r in rows[: cfg.top_k])
    console.print(f"top {min(cfg.top_k, len(rows))}: {top}", highlight=False)
    console.print(f"wrote {len(rows)} predicted ratings to {out}, best first", highlight=False)
    return out


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True

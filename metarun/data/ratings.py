"""Ratings of items by users, with each item's text: the data of personalised recommendation (each user a task).

A ratings file holds rows of (user, item, rating); an items file holds each item's fields, which a template (a
Python format string such as "{title} ({year}). {genres}. {plot}") makes into the item's text."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from metarun.data.corpus import DataConfig
from metarun.data.files import read_columns
from metarun.errors import UserError, brief
from metarun.schema import schema, setting


@schema("data", "ratings")
@dataclass
class RatingsDataConfig(DataConfig):
    _target_: str = "metarun.data.load_ratings"
    ratings: Any = MISSING  # a file of (user, item, rating) rows, a folder or a glob, or a list of them
    items: str = MISSING  # a file of the items' fields, one row per item
    template: str = "{title}. {genres}. {plot}"  # an item's text from its fields: any of the items file's columns
    user_column: str = "user"
    item_column: str = "item"  # in both files
    target_column: str = "rating"
    max_chars: int = setting(5000, least=1)  # an item's text is cut to this many characters


@dataclass(frozen=True)
class Ratings:
    """Rows of (user, item, target), and the text of every item they name."""

    users: list[str]
    items: list[str]
    targets: list[float]
    item_texts: dict[str, str]
    source: str = "ratings"

    def __len__(self) -> int:
        return len(self.targets)


def template_fields(template: str) -> list[str]:
    """The fields a template names ("{title} ({year})" -> ["title", "year"]), refused when it names none."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise UserError(f"data.template={template!r} is not a format string ({error}); write fields in braces, "
                        "e.g. '{title}. {genres}. {plot}', and a literal brace as {{ or }}.") from None  # fmt: skip
    if not fields or any(not f.isidentifier() for f in fields):
        raise UserError(
            f"data.template={template!r} must name item fields in braces by their column names, e.g. "
            "'{title}. {genres}. {plot}'; it names " + (brief(fields) if fields else "none") + "."
        )
    return list(dict.fromkeys(fields))


def item_text(template: str, fields: list[str], values: list[Any]) -> str:
    """One item's text: its fields in the template (a list joined with commas, a missing value left empty)."""
    shown = {}
    for name, value in zip(fields, values):
        shown[name] = ", ".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value)
    return template.format(**shown).strip()


def read_items(file: str, template: str, item_column: str, setting: str, extra: dict[str, str] | None = None,
               ) -> tuple[list[str], list[str], list[list]]:  # fmt: skip
    """Each row's item id and its text by `template`, in the file's order, with the values of the `extra` columns
    (setting -> column name)."""
    fields = template_fields(template)
    columns = {"item_column": item_column, **{f"template field {f!r}": f for f in fields}, **(extra or {})}
    ids, *values = read_columns(file, columns, setting)
    own, others = values[: len(fields)], values[len(fields) :]
    return ids, [item_text(template, fields, [column[row] for column in own]) for row in range(len(ids))], others


def numbers(values: list, column: str, setting: str) -> list[float]:
    """`values` as finite numbers (ratings), else a refusal naming the row and the value."""
    found = []
    for row, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise UserError(f"{setting}: row {row + 1} has {column}={value!r}, which is not a number; every rating "
                            "must be a finite number (e.g. 1 to 5).")  # fmt: skip
        found.append(number)
    return found


def read_item_texts(items: str, template: str, item_column: str = "item", max_chars: int = 5000,
                    setting: str = "data.items") -> dict[str, str]:  # fmt: skip
    """Each item's text, by its id, from an items file."""
    ids, found, _ = read_items(items, template, item_column, setting)
    texts: dict[str, str] = {}
    for row, (item, text) in enumerate(zip(ids, found)):
        if item in texts:
            raise UserError(f"{setting} {items} lists item {item!r} twice (row {row + 1}); give each item once.")
        texts[item] = text[:max_chars]
    empty = [item for item, text in texts.items() if not text]
    if empty:
        raise UserError(f"{len(empty)} item(s) of {items} have an empty text under data.template={template!r} "
                        f"({brief(empty)}); name fields that every item has.")  # fmt: skip
    return texts


def load_ratings(ratings, items: str, template: str = "{title}. {genres}. {plot}", user_column: str = "user",
                 item_column: str = "item", target_column: str = "rating", max_chars: int = 5000,
                 ) -> Ratings:  # fmt: skip
    """The ratings of `ratings` with the text of each item they name (from `items`, by `template`)."""
    columns = {"user_column": user_column, "item_column": item_column, "target_column": target_column}
    users, rated, raw = read_columns(ratings, columns, "data.ratings")
    targets = numbers(raw, target_column, "data.ratings")
    texts = read_item_texts(items, template, item_column, max_chars)
    unknown = sorted({str(i) for i in rated} - set(texts))
    if unknown:
        raise UserError(f"data.ratings names {len(unknown)} item(s) that data.items={items} lacks ({brief(unknown)}); "
                        "every rated item needs a row in the items file.")  # fmt: skip
    source = str(ratings) if isinstance(ratings, str) else ", ".join(map(str, ratings))
    return Ratings([str(u) for u in users], [str(i) for i in rated], targets, texts, source)

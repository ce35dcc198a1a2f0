"""Labelled text from files (JSONL, CSV, Parquet) through `datasets`, and the CLINC150 preset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metarun.data.corpus import Corpus
from metarun.errors import UserError, brief

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLINC150_DEFAULT = PROJECT_ROOT.parent / "shared" / "data" / "clinc150"


def _file_format(paths: list[Path]) -> str:
    formats = {FORMATS.get(p.suffix.lower()) for p in paths}
    if None in formats or len(formats) != 1:
        raise UserError(
            f"Cannot read data files {brief(str(p) for p in paths)}: give files of one format, "
            f"ending in one of {', '.join(FORMATS)}."
        )
    return formats.pop()


def load_local(
    files: str | Sequence[str],
    text_column: str = "text",
    label_column: str = "label",
    domain_column: str | None = None,
    drop_empty: bool = False,
) -> Corpus:
    """Read one file, or several split files pooled into one corpus (episodes split by class, not by file)."""
    import datasets

    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if not paths:
        raise UserError("data.files is empty; give at least one JSONL, CSV or Parquet file.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"Data file(s) not found: {brief(missing)}. Check data.files (paths resolve from {Path.cwd()})."
        )
    empty = [str(p) for p in paths if p.stat().st_size == 0]
    if empty:
        raise UserError(f"Data file(s) are empty: {brief(empty)}; each file needs labelled rows.")
    source = ", ".join(str(p) for p in paths)
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(_file_format(paths), data_files=[str(p) for p in paths], split="train")
    except (ValueError, datasets.exceptions.DatasetGenerationError) as error:
        raise UserError(f"Could not read {source} as {_file_format(paths)}: {error}") from error
    wanted = [c for c in (text_column, label_column, domain_column) if c is not None]
    absent = [c for c in wanted if c not in table.column_names]
    if absent:
        raise UserError(
            f"{source} lacks the column(s) {brief(absent)}; it has {brief(table.column_names)}. "
            "Name the right ones with data.text_column, data.label_column and data.domain_column."
        )
    texts = ["" if t is None else str(t) for t in table[text_column]]
    labels = [str(v) for v in table[label_column]]
    domains = [str(v) for v in table[domain_column]] if domain_column else None
    if drop_empty:
        keep = [i for i, t in enumerate(texts) if t.strip()]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        domains = [domains[i] for i in keep] if domains else None
    return Corpus(texts, labels, domains, source=source)


def load_clinc150(path: str | None = None, drop_empty: bool = False) -> Corpus:
    """CLINC150 in-scope intents: from a local folder of JSONL splits, else from the Hub (`clinc_oos`, `plus`)."""
    folder = Path(path) if path else CLINC150_DEFAULT
    if folder.is_dir():
        files = sorted(str(f) for f in folder.glob("*.jsonl"))
        return load_local(files, domain_column="domain", drop_empty=drop_empty)
    if path:
        raise UserError(f"data.path={path!r} is not a folder; give the folder that holds CLINC150's *.jsonl files.")
    return _clinc150_from_hub()


def _clinc150_from_hub() -> Corpus:
    import datasets

    try:
        splits = datasets.load_dataset("clinc_oos", "plus")
    except Exception as error:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise UserError(
            f"CLINC150 was not found at {CLINC150_DEFAULT} and the Hub dataset 'clinc_oos' could not be "
            f"loaded ({type(error).__name__}). Give data.path=<folder with train/validation/test.jsonl>."
        ) from error
    names = splits["train"].features["intent"].names
    texts, labels = [], []
    for split in splits.values():
        for text, intent in zip(split["text"], split["intent"]):
            if names[intent] != "oos":
                texts.append(text)
                labels.append(names[intent])
    return Corpus(texts, labels, None, source="hub:clinc_oos/plus")

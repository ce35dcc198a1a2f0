"""Labelled text from files: finding them and reading their rows (JSONL, CSV line by line; Parquet via `datasets`)."""

from __future__ import annotations

import codecs
import csv
import glob
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any, BinaryIO, Optional

from omegaconf import MISSING

from metarun.data.corpus import Corpus, DataConfig
from metarun.data.cutter import CSV_TOKENS, JSON_TOKENS, Cutter
from metarun.errors import UserError, brief
from metarun.schema import schema, setting

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
CHUNK = 1 << 16  # bytes read at a time, so a huge line is never held whole
KEEP_AT_LEAST = 1 << 16  # source characters kept of any string while reading: no label or column name is as long


@dataclass
class FileDataConfig(DataConfig):
    drop_empty: bool = False  # true: skip rows with empty text instead of stopping
    max_chars: int = setting(5000, least=1)  # longer texts are cut when read


@schema("data", "local")
@dataclass
class LocalDataConfig(FileDataConfig):
    _target_: str = "metarun.data.load_local"
    files: Any = MISSING  # a path, a folder or a glob pattern, or a list of them (their files are pooled)
    text_column: str = "text"
    label_column: str = "label"
    domain_column: Optional[str] = None  # needed for task=domain_adapt and task=fixed_tasks


def _check_one_format(paths: list[Path]) -> None:
    """Pooled files must share one known format."""
    formats = {FORMATS.get(p.suffix.lower()) for p in paths}
    if None in formats or len(formats) != 1:
        raise UserError(
            f"Cannot read data files {brief(str(p) for p in paths)}: give files of one format, "
            f"ending in one of {', '.join(FORMATS)}."
        )


def load_local(
    files: str | Sequence[str],
    text_column: str = "text",
    label_column: str = "label",
    domain_column: str | None = None,
    drop_empty: bool = False,
    max_chars: int = 5000,
    setting: str = "data.files",
) -> Corpus:
    """Read one file, or several split files pooled into one corpus (episodes split by class, not by file).

    Texts longer than `max_chars` characters are cut to their first `max_chars` as they are read; `setting` names
    where the files were given, in errors."""
    paths = readable_files(files, setting)
    columns = {"text_column": text_column, "label_column": label_column}
    if domain_column is not None:
        columns["domain_column"] = domain_column
    texts, labels, domains = [], [], []
    for path in paths:  # one file at a time, so that a bad label is named with its file and row
        file_texts, file_labels, *rest = _read([path], columns, max_chars)
        keep = [i for i, t in enumerate(file_texts) if t.strip() or not drop_empty]
        check_labels({i + 1: file_labels[i] for i in keep}, path, label_column)
        texts += [file_texts[i] for i in keep]
        labels += [str(file_labels[i]) for i in keep]
        domains += [str(rest[0][i]) for i in keep] if rest else []
    return Corpus(texts, labels, domains if domain_column else None, source=", ".join(str(p) for p in paths))


def check_labels(labels: dict[int, object], path: Path, column: str) -> None:
    """Every row (`labels` by row number) has a label, and the labels are all text or all numbers: a missing one
    would become the class 'None', and a number among text labels a class of its own."""
    absent = lambda label: label is None or label != label or str(label).strip() == ""  # noqa: E731 (NaN != NaN)
    missing = [row for row, label in labels.items() if absent(label)]
    if missing:
        raise UserError(f"{path}: {len(missing)} row(s) have no {column!r} (rows {brief(missing)}, counting from 1); "
                        "every example needs a label. Remove those rows or give them one.")  # fmt: skip
    if any(isinstance(label, str) for label in labels.values()):
        numbers = [(row, label) for row, label in labels.items() if not isinstance(label, str)]
        if numbers:
            row, label = numbers[0]
            raise UserError(
                f"{path}: the {column!r} values mix text and numbers ({len(numbers)} number(s); row {row} has "
                f"{label!r}), so {label!r} would be a class of its own beside the text labels. Write every label as "
                f'text (e.g. "{label}") or every label as a number.'
            )


def load_texts(file: str, text_column: str = "text", max_chars: int = 5000, setting: str = "inputs") -> list[str]:
    """The texts of one file (JSONL, CSV or Parquet), e.g. to predict labels for; `setting` names it in errors."""
    return read_columns(file, {"text_column": text_column}, setting, max_chars)[0]


def read_columns(files: str | Sequence[str], columns: dict[str, str], setting: str, max_chars: int = 5000
                 ) -> list[list]:  # fmt: skip
    """One list per column of `columns` (setting -> column name; the first is read as text, cut to `max_chars`), over
    the rows of every file `files` names; `setting` names where the files were given, in errors."""
    return _read(readable_files(files, setting), columns, max_chars)


def readable_files(files: str | Sequence[str], setting: str) -> list[Path]:
    """The paths of `files`, each an existing, non-empty file, all of one format. An entry may be a folder (its
    JSONL, CSV or Parquet files) or a glob pattern (`data/*.train.jsonl`), each expanded in sorted order."""
    entries = [files] if isinstance(files, (str, Path)) else list(files)
    paths = [path for entry in entries for path in _expand(str(entry), setting)]
    if not paths:
        raise UserError(f"{setting} is empty; give at least one JSONL, CSV or Parquet file.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"Data file(s) not found: {brief(missing)}. Check {setting} (paths resolve from {Path.cwd()}).")
    empty = [str(p) for p in paths if p.stat().st_size == 0]
    if empty:
        raise UserError(f"Data file(s) are empty: {brief(empty)}; each file needs labelled rows.")
    _check_one_format(paths)
    return paths


def _expand(entry: str, setting: str) -> list[Path]:
    """One `data.files` entry as the files it names: itself, a folder's data files, or a glob's matches."""
    if Path(entry).is_dir():
        found = sorted(p for p in Path(entry).iterdir() if p.suffix in FORMATS and p.is_file())
        if not found:
            raise UserError(f"{setting}: the folder {entry} holds no .jsonl, .csv or .parquet file.")
        return found
    if glob.has_magic(entry):
        found = sorted(Path(p) for p in glob.glob(entry, recursive=True) if Path(p).is_file())
        if not found:
            raise UserError(
                f"{setting}: the pattern {entry!r} matches no file (patterns resolve from {Path.cwd()}); check the "
                "folder and the pattern, e.g. 'data/*.train.jsonl'."
            )
        return found
    return [Path(entry)]


def _read(paths: list[Path], columns: dict[str, str], max_chars: int) -> list[list]:
    """One list per column (the first is the text, cut to `max_chars`, None read as ""), rows of all files."""
    values: list[list] = [[] for _ in columns]
    for path in paths:
        cut = 0
        for row in _rows(path, columns, max_chars):
            text = "" if row[0] is None else str(row[0])
            cut += len(text) > max_chars
            values[0].append(text[:max_chars])
            for column, value in zip(values[1:], row[1:]):
                column.append(value)
        if cut:  # one line per file: the user learns the texts were shortened, not which ones
            logging.getLogger(__name__).warning(
                f"data file {path}: {cut} text(s) longer than max_chars={max_chars} characters were cut to "
                f"their first {max_chars}."
            )
    return values


def _rows(path: Path, columns: dict[str, str], max_chars: int) -> Iterator[Sequence]:
    """The wanted columns of each row of one file, in the order of `columns`."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path, columns, max_chars)
    if suffix == ".csv":
        return _csv_rows(path, columns, max_chars)
    return _table_rows(path, columns)


def _jsonl_rows(path: Path, columns: dict[str, str], max_chars: int) -> Iterator[list]:
    # 12 source characters per character: a character outside the BMP is written as two \uXXXX escapes
    cutter = Cutter(JSON_TOKENS, cut_unquoted=False, limit=max(12 * (max_chars + 1), KEEP_AT_LEAST))
    for number, line in enumerate(_lines(path, cutter), start=1):
        if not line.strip():
            continue  # blank lines, as at the end of many files, hold no row
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(
                f"data file {path}, line {number} is not valid JSON: {error.msg} at column {error.colno}. "
                'Each line must hold one JSON object, such as {"text": "...", "label": "..."}.'
            ) from None
        if not isinstance(row, dict):
            raise UserError(
                f"data file {path}, line {number} holds {line.strip()[:40]!r}, not a JSON object. "
                'Each line must hold one JSON object, such as {"text": "...", "label": "..."}.'
            )
        absent = [c for c in columns.values() if c not in row]
        if absent:
            raise _lacks(f"data file {path}, line {number}: the row", absent, row, columns)
        yield [row[c] for c in columns.values()]


def _csv_rows(path: Path, columns: dict[str, str], max_chars: int) -> Iterator[list]:
    limit = max(2 * (max_chars + 1), KEEP_AT_LEAST)  # 2 source characters per character: a quote is written ""
    csv.field_size_limit(max(csv.field_size_limit(), limit))  # the csv module refuses longer fields
    reader = csv.reader(_lines(path, Cutter(CSV_TOKENS, cut_unquoted=True, limit=limit)))
    try:
        header = next(reader, [])
        absent = [c for c in columns.values() if c not in header]
        if absent:
            raise _lacks(f"data file {path}", absent, header, columns)
        index = [header.index(c) for c in columns.values()]
        start = reader.line_num + 1  # a quoted field may span lines: name the line where the row starts
        for row in reader:
            if row and len(row) != len(header):
                raise UserError(
                    f"data file {path}, line {start}: the row has {len(row)} fields, the header has "
                    f"{len(header)}. Give every row one value per column, and quote values that hold a comma "
                    '(write "a, b" with the quotes).'
                )
            if row:  # blank lines hold no row
                yield [row[i] for i in index]
            start = reader.line_num + 1
    except csv.Error as error:
        raise UserError(
            f"data file {path}, line {reader.line_num} is not valid CSV: {error}. Fix that line, or re-save the "
            "file from a spreadsheet as CSV (comma-separated, UTF-8)."
        ) from None


def _table_rows(path: Path, columns: dict[str, str]) -> Iterator[tuple]:
    """Parquet (and .json files, which may hold one JSON array) through `datasets`, a batch at a time."""
    import datasets

    datasets.disable_progress_bars()
    builder = FORMATS[path.suffix.lower()]
    try:
        table = datasets.load_dataset(builder, data_files=[str(path)], split="train")
    except (ValueError, datasets.exceptions.DatasetGenerationError) as error:
        raise UserError(f"Could not read {path} as {builder}: {error}") from error
    absent = [c for c in columns.values() if c not in table.column_names]
    if absent:
        raise _lacks(f"data file {path}", absent, table.column_names, columns)
    for batch in table.iter(batch_size=1000):  # a batch at a time: the cut texts are kept, not the full ones
        yield from zip(*(batch[c] for c in columns.values()))


def _lacks(where: str, absent: list[str], present: Iterable[str], columns: dict[str, str]) -> UserError:
    needs = " and ".join(f"data.{key}={name!r}" for key, name in columns.items())
    return UserError(
        f"{where} lacks the column(s) {brief(absent)}; it has {brief(present) or 'none'}. Every row needs "
        f"{needs}: add the missing values, or name the right columns with data.text_column, "
        "data.label_column and data.domain_column."
    )


def _lines(path: Path, cutter: Callable[[Iterable[str]], str]) -> Iterator[str]:
    """Each line of a UTF-8 file, read in pieces that `cutter` joins with its long strings cut."""
    decode = codecs.getincrementaldecoder("utf-8-sig")().decode  # one per file: drops a BOM, spans pieces
    number = 0
    with path.open("rb") as file:
        while file.peek(1):
            number += 1
            try:
                line = cutter(_pieces(file, decode))
            except UnicodeDecodeError as error:
                bad = " ".join(f"0x{b:02x}" for b in error.object[error.start : error.end])
                raise UserError(
                    f"data file {path}, line {number} is not UTF-8 text: it holds the byte(s) {bad}, which UTF-8 "
                    "does not allow (the file was probably saved as Latin-1 or Windows-1252). Re-save the file as "
                    f"UTF-8, e.g. `iconv -f cp1252 -t utf-8 {path.name} > utf8-{path.name}`."
                ) from None
            yield line


def _pieces(file: BinaryIO, decode: Callable[..., str]) -> Iterator[str]:
    """The rest of the current line, decoded, in pieces of at most CHUNK bytes."""
    while True:
        piece = file.readline(CHUNK)
        yield decode(piece, final=not piece)
        if not piece or piece.endswith(b"\n"):
            return

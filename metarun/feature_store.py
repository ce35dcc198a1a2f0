"""Feature tables (`metarun.features`) in files: 16-bit values, each text only as long as it is, read back a batch
at a time; and kept in a folder under a key of everything that produced them, so that another run, seed, sweep job
or metarun-eval on the same texts with the same frozen weights reads them instead of computing them again.

A table's rows are its distinct texts in `torch.unique`'s order; row i holds `lengths[i]` vectors (one of pooled
features, or one per real token of hidden states: never padding) from vector `offsets[i]` on, in `values.bin` as
[vectors, width]. `meta.json` beside it says what the vectors are. A kept table is built in `<key>.partial-<pid>-*`
and renamed to `<key>` when complete, so a killed build is never read, and two jobs that build one table at once
both finish (the second's rename is refused, and it reads the first's copy).

The folder is $METARUN_CACHE, else $XDG_CACHE_HOME/metarun/features (~/.cache/metarun/features); `rm -rf` it to
clear every table. METARUN_CACHE set empty keeps none: each table then lives in a temporary file, as validation's
do (their weights change at every validation, so no later run could read them).

Rows are read with positional reads into the batch being looked up, not through a memory map: a mapped page that
was read counts in the process's resident memory (and a job's memory limit) until the kernel runs short, so a table
read once over would look as large as the file; the kernel's page cache keeps the rows read often fast all the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from metarun.errors import UserError
from metarun.tokens import PAD_ID

ENV = "METARUN_CACHE"
FORMAT = 1  # in every key: a table written in another layout is never read
# float16 rather than bfloat16: 3 more bits of precision, and the values stay far inside its range (a post-LN
# encoder's layers end in a LayerNorm, pooled features are means of such states); `_storable` refuses any that do not
FLOAT16_MAX = torch.finfo(torch.float16).max
Batches = Iterable[tuple[list[int], torch.Tensor]]  # (row numbers, their values), as `features.batches_by_length`


def cache_folder() -> Path | None:
    """Where tables are kept for later runs; None where METARUN_CACHE is set empty (each lives as long as it is
    used)."""
    if ENV in os.environ:
        return Path(os.environ[ENV]).expanduser() if os.environ[ENV] else None
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "metarun" / "features"


@dataclass(frozen=True)
class Source:
    """What computes a kept table's values besides its texts, all in its key."""

    values: str  # what the vectors are: "features", "hidden states after 2 layers"
    architecture: str  # `architecture(model)`
    weights: dict[str, torch.Tensor]  # the frozen part's parameters, by name
    autocast: str  # the forward's autocast dtype, "None" for none


def architecture(model: nn.Module) -> str:
    """What computes a model's values besides its weights: every module's class and plain settings (a head count, a
    norm's eps), in which models with weights of the same shapes may differ."""
    plain = (bool, int, float, str, type(None))
    return repr([(name, type(module).__qualname__,
                  sorted((k, v) for k, v in vars(module).items() if isinstance(v, plain) and not k.startswith("_")
                         and k != "training"))
                 for name, module in model.named_modules()])  # fmt: skip


def table_key(source: Source, rows: torch.Tensor) -> str:
    """A digest of `source` and of the texts of `rows` (their tokens without padding, so the width they are padded
    to does not matter; the tokenizer's settings and the texts are in the tokens)."""
    described = {"format": FORMAT, "values": source.values, "architecture": source.architecture,
                 "autocast": source.autocast}  # fmt: skip
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for name, weight in source.weights.items():
        digest.update(f"{name} {tuple(weight.shape)} {weight.dtype}".encode())
        digest.update(weight.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    rows = rows.cpu().long()
    real = rows != PAD_ID
    digest.update(real.sum(1).numpy())
    digest.update(rows[real].numpy())
    return digest.hexdigest()[:32]


@dataclass
class Layout:
    """Where each row's vectors lie in a table's file, and in which dtypes."""

    lengths: list[int]  # vectors per row
    width: int
    stored: torch.dtype
    computed: torch.dtype  # what the values are read back as

    def __post_init__(self) -> None:
        self.offsets = list(itertools.accumulate(self.lengths, initial=0))[:-1]

    @property
    def vector_bytes(self) -> int:
        return self.width * self.stored.itemsize

    @property
    def nbytes(self) -> int:
        return sum(self.lengths) * self.vector_bytes


@dataclass(frozen=True)
class Place:
    """Where a table's file is written, and what to do when the disk there has no room for it."""

    folder: Path
    remedy: str


class StoredValues:
    """A table's values in `file` (laid out as `layout` says), read a batch of rows at a time."""

    def __init__(self, file, layout: Layout) -> None:
        self.file, self.layout = file, layout
        weakref.finalize(self, file.close)  # closed with the table, whichever holds it last

    def read(self, rows: list[int], length: int | None = None) -> torch.Tensor:
        """Rows `rows` as [len(rows), width] (one vector each), or [len(rows), length, width] zero-padded after each
        text's own length, in the dtype they were computed in."""
        layout = self.layout
        found = torch.zeros((len(rows), length or 1, layout.width), dtype=layout.stored)
        into = found.numpy()
        for i, row in enumerate(rows):
            self.file.seek(layout.offsets[row] * layout.vector_bytes)
            target = into[i, : layout.lengths[row]]
            if self.file.readinto(target) != target.nbytes:
                raise UserError(f"A feature table's file ({self.file.name}) ends early; delete it to compute it again.")
        return (found if length else found[:, 0]).to(layout.computed)


def stored_values(batches: Callable[[], Batches], lengths: list[int], source: Source | None, rows: torch.Tensor,
                  ) -> StoredValues:  # fmt: skip
    """The values of a table of `rows`, computed by `batches()`. With a `source` the table is one later runs may
    read: kept in the cache folder (read from there when it holds it), and its build shown with progress and a
    line; without one it lives in a temporary file, unannounced."""
    folder = cache_folder() if source is not None else None
    if folder is None:
        return _temporary(batches, lengths, announced=source is not None)
    entry = folder / table_key(source, rows)
    found = _opened(entry, lengths)
    if found is not None:
        _say(f"features: reused {entry} ({len(lengths)} texts)")
        return found
    started = time.perf_counter()
    remedy = f"set {ENV} to a folder on a disk with room (`rm -rf {folder}` clears every table kept there)"
    _build(entry, batches, lengths, Place(folder, remedy))
    found = _opened(entry, lengths)
    _say(f"features: computed for {len(lengths)} texts in {time.perf_counter() - started:.1f} s, stored in {entry} "
         f"({_size(found.layout.nbytes)})")  # fmt: skip
    return found


def _temporary(batches: Callable[[], Batches], lengths: list[int], announced: bool) -> StoredValues:
    """A table in a file of its own that is gone once closed (with the table, or when the process ends)."""
    file = tempfile.TemporaryFile()
    room = Place(Path(tempfile.gettempdir()), "set TMPDIR to a folder on a disk with room")
    values = StoredValues(file, _fill(file, batches(), lengths, room, shown=announced))
    if announced:
        _say(f"features: computed for {len(lengths)} texts ({_size(values.layout.nbytes)}), kept only while this "
             f"process runs, as {ENV} is set empty")  # fmt: skip
    return values


def _build(entry: Path, batches: Callable[[], Batches], lengths: list[int], room: Place) -> None:
    """The table at `entry`, built under a name of its own and renamed when complete."""
    shutil.rmtree(entry, ignore_errors=True)  # a complete-looking entry that is not (see `_opened`)
    partial = entry.with_name(f"{entry.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        with open(partial / "values.bin", "wb") as file:
            layout = _fill(file, batches(), lengths, room, shown=True)
        meta = {"format": FORMAT, "texts": len(lengths), "vectors": sum(lengths), "width": layout.width,
                "stored": str(layout.stored).removeprefix("torch."),
                "computed": str(layout.computed).removeprefix("torch.")}  # fmt: skip
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(partial, entry)
        except OSError:
            if not entry.is_dir():  # else another job finished the same table first: its copy serves
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _opened(entry: Path, lengths: list[int]) -> StoredValues | None:
    """The table kept at `entry`, None when there is none, or its file is not the size its meta.json says."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        file = open(entry / "values.bin", "rb")
    except (OSError, ValueError):
        return None
    layout = Layout(lengths, meta["width"], getattr(torch, meta["stored"]), getattr(torch, meta["computed"]))
    if os.fstat(file.fileno()).st_size != layout.nbytes:
        file.close()
        return None
    return StoredValues(file, layout)


def _fill(file, batches: Batches, lengths: list[int], room: Place, shown: bool) -> Layout:
    """Write each batch's rows where `Layout` puts them, once the first batch (the shortest texts) has told their
    width and the disk has been checked for room; returns the layout."""
    from metarun import progress  # here: progress imports the algorithms, which import this module

    layout, done, total = None, 0, sum(lengths)  # counted in tokens: the longest texts come last and cost the most
    with progress.phase("frozen features, tokens") if shown else contextlib.nullcontext(lambda d, t: None) as advance:
        for rows, values in batches:
            if layout is None:
                stored = torch.float64 if values.dtype == torch.float64 else torch.float16  # float64: numerical checks
                layout = Layout(lengths, values.shape[-1], stored, values.dtype)
                _check_room(layout.nbytes, room)
            _write_rows(file, layout, rows, _storable(values, layout.stored).cpu().numpy())
            del values  # before the next batch is computed: one batch in memory at a time
            done += sum(lengths[row] for row in rows)
            advance(done, total)
    file.flush()
    return layout


def _write_rows(file, layout: Layout, rows: list[int], values) -> None:
    for row, value in zip(rows, values):
        file.seek(layout.offsets[row] * layout.vector_bytes)
        file.write(value.reshape(-1, layout.width)[: layout.lengths[row]])


def _storable(values: torch.Tensor, stored: torch.dtype) -> torch.Tensor:
    """`values` in the dtype they are stored in; refused where float16 would make infinities of them."""
    if stored == torch.float16:
        low, high = torch.aminmax(values)  # not values.abs(): that would cost a batch's worth of memory
        peak = float(max(-low, high))
        if FLOAT16_MAX < peak < float("inf"):  # NaN and inf are kept as they are: the loop reports a diverged run
            raise UserError(
                f"The encoder's frozen layers give values up to {peak:.3g}, beyond float16's range "
                f"({FLOAT16_MAX:.0f}), in which metarun's feature tables are stored. Let meta-training and adaptation "
                "change the whole encoder (algo.outer_scope=all, algo.inner_scope=all) so that nothing is cached."
            )
    return values.to(stored)


def _check_room(needed: int, room: Place) -> None:
    free = shutil.disk_usage(room.folder).free
    if needed > free:
        raise UserError(
            f"The feature table of what the encoder's frozen part computes needs {_size(needed)} in {room.folder}, "
            f"which has {_size(free)} free: free some space there, or {room.remedy}."
        )


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB" if nbytes >= 10**5 else f"{nbytes / 1e3:.1f} kB"


def _say(line: str) -> None:
    from metarun import progress  # see `_fill`

    progress.console.print(line, highlight=False, soft_wrap=True)  # a path to copy

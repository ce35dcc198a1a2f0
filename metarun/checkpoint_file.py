"""Reading a checkpoint file safely: torch.save's zip archive checked against its members' CRC-32 first, then read
with `weights_only=True` (a crafted pickle never runs); an earlier format is upgraded where it can be, any other is
refused in one paragraph."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

import metarun
from metarun.errors import UserError, brief

FORMAT = 4  # the layout checkpoint.py writes (4: the task family named in the config); 3 is read as 4


def check_archive(path: Path) -> None:
    """A checkpoint is torch.save's zip archive, and every member matches the CRC-32 stored with it: bytes changed
    on disk (bit flips in the weights) are refused instead of loading as other weights."""
    damaged = "the file is not a zip archive, as torch.save writes"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            damaged = None if bad is None else f"{bad} does not match its CRC-32"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:  # truncated, or a damaged header
        damaged = " ".join(str(error).split()[:16])
    if damaged:
        raise UserError(
            f"{path} is corrupt or truncated, or not a checkpoint metarun wrote ({damaged}). Delete it; to resume, a "
            "run needs a complete checkpoints/last.pt (best.pt is a copy of an earlier validation step), else start "
            "again."
        )


COLUMNS_OF_FORMAT_3 = {"text_column": "text", "label_column": "label", "max_chars": 5000}  # load_local's defaults


def _format_3_as_4(saved: dict) -> dict:
    """A checkpoint of format 3, whose config named no task family: fixed evaluation tasks made it FixedTasks."""
    task, data = dict(saved["config"]["task"]), saved["config"]["data"]
    fixed = bool(task.get("eval_tasks"))
    if fixed:  # the task files were read with the data's columns and cut
        task.update({k: data.get(k, default) for k, default in COLUMNS_OF_FORMAT_3.items()})
    else:
        task = {k: v for k, v in task.items() if k not in ("eval_tasks", "eval_shots")}
    task = {"_target_": f"metarun.tasks.{'FixedTasks' if fixed else 'SampledEpisodes'}", **task}
    return {**saved, "format": FORMAT, "config": {**saved["config"], "task": task}}


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A metarun checkpoint, read with `weights_only=True` (tensors and plain values only: a crafted pickle never
    runs), or one paragraph saying why it cannot be used."""
    if not path.is_file():
        raise UserError(f"No checkpoint at {path}; a run writes checkpoints/last.pt at its first validation (and "
                        "removes it when it finishes with train.keep_last=false).")  # fmt: skip
    check_archive(path)
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(
            f"{path} was refused: it holds Python objects other than tensors and plain values, which metarun never "
            f"writes and will not run ({' '.join(str(error).split()[:12])} ...). Use a checkpoint that metarun wrote."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise UserError(
            f"{path} is corrupt or truncated ({' '.join(str(error).split()[:16])}). Delete it; to resume, a run needs "
            "a complete checkpoints/last.pt (best.pt is a copy of an earlier validation step), else start again."
        ) from error
    if isinstance(saved, dict) and saved.get("format") == 3:
        saved = _format_3_as_4(saved)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise UserError(
            f"{path} is not a metarun checkpoint of format {FORMAT} (found {found!r}; written by metarun "
            f"{saved.get('metarun_version', 'unknown') if isinstance(saved, dict) else 'unknown'}, this is "
            f"{metarun.__version__}). Use the metarun version that wrote it, or start a new run."
        )
    missing = [k for k in ("model", "config", "tokenizer", "step") if k not in saved]
    if missing:
        raise UserError(f"{path} lacks {brief(missing)}; it is not a complete metarun checkpoint.")
    return saved

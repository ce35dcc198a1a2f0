"""A run's folder: claimed before any work (a run never writes into another's), and written atomically (a full disk
or a kill mid-write never touches the last good file)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from metarun.errors import UserError

RESULTS = ("metrics.json", "checkpoints/last.pt", "checkpoints/best.pt")  # what marks a folder as a run's own
LOCK = ".lock"  # held by the process that writes into a run folder, while it does
STORAGE_FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (the folder is not writable)",
    errno.EPERM: "permission denied (the folder is not writable)",
}


def storage_error(path: Path, error: OSError, run_folder: Path | None = None, left: Path | None = None) -> UserError:
    """One paragraph for a failed write; `left`: a partial file the file system would not let go of."""
    why = STORAGE_FAULTS.get(error.errno, error.strerror or str(error))
    partial = f"{left} is left over (it could not be removed): delete it" if left else "no partial file is left"
    resumable = run_folder is not None and (run_folder / "checkpoints" / "last.pt").is_file()
    then = "run again"
    if resumable:  # a resume cannot change its folder: where the space must come from
        then = ("continue the run as below: it goes on in this folder from its last checkpoint, so free the space on "
                "this disk, or move the whole run folder to another disk and resume it there")  # fmt: skip
    return UserError(
        f"Could not write {path}: {why}. Files written before are intact and {partial}. "
        f"Free some space or make the folder writable, then {then}.",
        run_folder=run_folder,
    )


def write_atomically(path: Path, data: bytes, run_folder: Path | None = None) -> None:
    """Write beside the target, then rename: a full disk or a kill mid-write never touches the last good file, and
    a failed write leaves no partial file behind."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # a process's own: no two writers share one
    try:
        with open(partial, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on disk before it takes the name of the last good file
        os.replace(partial, path)
    except OSError as error:
        try:
            partial.unlink(missing_ok=True)
            left = None
        except OSError:  # a file system turned read-only refuses the clean-up too: say so, don't raise again
            left = partial
        raise storage_error(path, error, run_folder, left) from error


def write_text_atomically(path: Path, text: str) -> None:
    """A run folder's text file (metrics, splits, tokenizer), written like a checkpoint."""
    write_atomically(path, text.encode(), run_folder=path.parent)


def check_writable(folder: Path) -> None:
    """The folder exists (made if needed) and takes a file: checked before any work, not after hours of it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}.partial"
        probe.write_bytes(b"metarun")
        probe.unlink()
    except OSError as error:
        raise storage_error(Path(error.filename or folder), error) from error


def refuse_taken_folder(output_dir: Path) -> None:
    """A new run never writes into a folder that holds another run's results."""
    taken = [name for name in RESULTS if (output_dir / name).exists()]
    if taken:
        raise UserError(
            f"{output_dir} already holds another run's results ({', '.join(taken)}); a run never writes over them. "
            f"Continue that run with train.resume={output_dir}, or give this one another hydra.run.dir (the "
            "default folder is new for every run)."
        )


def claim_run_folder(output_dir: Path, resume: str | None) -> Path:
    """The folder this run writes to: a fresh one, or with `resume` the stopped run's own, which must hold a
    `checkpoints/last.pt` to continue from (its settings are checked by `checkpoint.stopped_run`)."""
    if resume:
        folder = Path(resume)
        if not (folder / "checkpoints" / "last.pt").is_file():
            raise UserError(
                f"train.resume={resume!r} has no checkpoints/last.pt to continue from; give the folder of a run that "
                "saved a checkpoint (a run saves one at each validation and when it is stopped)."
            )
        check_writable(folder / "checkpoints")
        return folder
    refuse_taken_folder(output_dir)
    for folder in (output_dir, output_dir / "checkpoints"):
        check_writable(folder)
    return output_dir


_HELD: set[Path] = set()  # the folders this process has locked: the command's claim and the run's are one


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """This process alone writes into `folder` while the block runs: a second run given the same folder, or a
    resume of a run that is still running, is refused. The lock goes with the process, however it ends."""
    key, held = folder.resolve(), _HELD  # bound here: at interpreter exit the module's globals may be gone
    if key in held:
        yield
        return
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise UserError(
                f"{folder} is in use by another metarun process ({handle.read().strip() or 'its pid unknown'}), which "
                "writes into it now; two runs in one folder would overwrite each other's results. Give this run "
                "another hydra.run.dir, or wait for that one to end (to continue it, train.resume= once it stopped)."
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)

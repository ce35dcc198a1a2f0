"""Hydra callbacks: what must happen around a run or a sweep rather than inside it.

- `RunFolderGuard`: a new run refuses a folder that holds another run's results, or that another process is
  writing into (it locks the folder until it ends), before Hydra writes its config files there, so the other run's
  `.hydra/` stays as it was; a new sweep likewise refuses another sweep's folder.
- `FailedJobs` (sweeps, `metarun -m`): Hydra marks a job whose task function raised as failed and goes on with the
  next; this tells the user at once, keeps the reason in the job's folder (`error.txt`) and, at the end, lists
  every failed job and exits non-zero.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from metarun.config import process_rank
from metarun.errors import EXIT_USER_ERROR, UserError, report
from metarun.progress import print_where
from metarun.run_folder import folder_lock, refuse_taken_folder


class RunFolderGuard(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        # the record (the basic sweeper's multirun.yaml) or a job's config files (Optuna writes its record at the end)
        if (sweep / "multirun.yaml").exists() or any(sweep.glob("*/.hydra")):
            report(
                f"{sweep} already holds another sweep's jobs; a sweep never writes into another's folder. "
                "Give this one another hydra.sweep.dir (the default folder is new for every sweep); "
                f"metarun-report {shlex.quote(str(sweep))} <the new folder> tables both together."
                + unfinished_jobs(sweep)
            )
            sys.exit(EXIT_USER_ERROR)

    # the run folder's lock, from before Hydra writes into it until the command ends (`release`)
    held: ClassVar[contextlib.ExitStack] = contextlib.ExitStack()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.run.dir)
        if process_rank() > 0 or "run" in config:  # torchrun's rank 0 alone claims; metarun-eval writes no run
            return
        try:
            if not config.train.resume:  # a resume writes its config files into .hydra/resume-ID, beside the run's own
                refuse_taken_folder(folder)
            if folder.is_dir() or not config.train.resume:  # a resume of no folder is refused by the run itself
                folder.mkdir(parents=True, exist_ok=True)
                RunFolderGuard.held.enter_context(folder_lock(folder))
        except UserError as error:
            report(str(error))
            sys.exit(EXIT_USER_ERROR)
        except OSError:  # an unwritable place: the run tells it in its own words (storage_error)
            pass

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        RunFolderGuard.release()

    @classmethod
    def release(cls) -> None:
        """Unlock the run folder: at the run's end, or when the command stops (a stop skips Hydra's run end)."""
        cls.held.close()


class FailedJobs(Callback):
    sweep_dir: ClassVar[Path | None] = None  # the sweep this process launched, whose jobs' error.txt it lists

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        FailedJobs.sweep_dir = Path(config.hydra.sweep.dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or config.hydra.mode != RunMode.MULTIRUN:
            return
        error = job_return._return_value  # the exception itself; reading .return_value would raise it
        why = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        overrides = " ".join(job_return.overrides or [])
        report(f"job {overrides!r} failed: {why}", title="metarun sweep")
        folder = Path(config.hydra.runtime.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(why + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir).resolve()
        print_where(
            "sweep folder",
            sweep,
            [
                (f"metarun-report {shlex.quote(str(sweep))}", "its table and plots"),
                (f"tensorboard --logdir {shlex.quote(str(sweep))}", "every job's curves"),
            ],
        )
        if FailedJobs.summary():
            sys.exit(1)

    @classmethod
    def summary(cls) -> bool:
        """Print which jobs of the sweep failed and why, once; True when any did. Read from the jobs' error.txt:
        a launcher may run the jobs in other processes or on other machines."""
        failed = [job / "error.txt" for job in _jobs(cls.sweep_dir) if (job / "error.txt").is_file()]
        cls.sweep_dir = None
        if not failed:
            return False
        lines = [f"  {path.parent.name}: {path.read_text().strip()}" for path in failed]
        report(f"{len(failed)} job(s) of the sweep failed:\n" + "\n".join(lines), title="metarun sweep")
        return True


def unfinished_jobs(sweep: Path) -> str:
    """The jobs of `sweep` without results, each with the command that continues it from its last.pt, if any."""
    jobs = [job for job in _jobs(sweep) if (job / ".hydra" / "overrides.yaml").is_file()]
    waiting = [job for job in jobs if not (job / "metrics.json").exists()]
    if not waiting:
        return ""
    lines = []
    for job in waiting:
        overrides = [o for o in OmegaConf.load(job / ".hydra" / "overrides.yaml") if not o.startswith("hydra.")]
        if (job / "checkpoints" / "last.pt").is_file():
            lines.append("  " + shlex.join(["metarun", *overrides, f"train.resume={job}"]))
        else:
            lines.append(f"  {job.name}: no checkpoint yet; run it anew with metarun {shlex.join(overrides)}")
    return f"\nIts jobs without results ({len(waiting)} of {len(jobs)}); each goes on with:\n" + "\n".join(lines)


def _jobs(sweep: Path | None) -> list[Path]:
    """The job folders of a sweep, in the order of their numbers."""
    return sorted((p for p in sweep.iterdir() if p.is_dir()), key=_job_number) if sweep and sweep.is_dir() else []


def _job_number(job: Path) -> int:
    """The job's number, from its folder's name (`N_overrides`)."""
    number = job.name.split("_", 1)[0]
    return int(number) if number.isdigit() else -1

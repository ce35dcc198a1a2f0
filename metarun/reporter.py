"""Meta-training's progress as it goes: TensorBoard scalars, and a live bar on a terminal or whole lines in a log
(`RunReporter`), with the validations' progress inside."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from metarun import progress
from metarun.algorithms import TaskStats
from metarun.progress import clock, job_tag, live_bars
from metarun.stats import METRICS, EvalResult


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class LogLines:
    """Progress for a log (stdout not a terminal: a Slurm log, `| tee`): whole lines that a narrow or absent
    terminal cannot cut. A step's line waits for the next call, to carry its validation when it has one; it is
    shown for the first and last step, each validation, every `steps`-th step (about `lines` in a run) and after
    `seconds` without a line."""

    def __init__(self, total_steps: int, start_step: int = 0, lines: int = 20, seconds: float = 30.0) -> None:
        self.total, self.first = total_steps, start_step + 1
        self.every = max(1, math.ceil((total_steps - start_step) / lines))
        self.seconds = seconds
        self.started = self.shown_at = time.monotonic()
        self.pending: tuple[int, str, float] | None = None  # (step, status, when)
        self.first_done: tuple[int, float] | None = None  # the ETA's pace is counted from here (not setup's time)
        self.validation_started = self.started

    def step(self, step: int, status: str) -> None:
        self.flush(force=False)
        now = time.monotonic()
        self.pending, self.first_done = (step, status, now), self.first_done or (step, now)

    def validation(self, step: int, result: str) -> None:
        if self.pending is not None and self.pending[0] == step:
            step, status, at = self.pending
            self.pending = None
            self._show(step, f"{status} | val {result}", at)
        else:
            self._show(step, f"val {result}", time.monotonic())

    def validating(self, step: int, done: int, total: int) -> None:
        """A validation's progress: a line when it has run `seconds` without one (most validations end sooner)."""
        now = time.monotonic()
        self.validation_started = self.validation_started if done > 1 else now
        if done < total and now - max(self.shown_at, self.validation_started) >= self.seconds:
            elapsed = now - self.validation_started
            elapsed, eta = clock(elapsed), clock(elapsed / (done - 1) * (total - done))  # paced from the first one
            line = f"{job_tag()}validation at step {step}: {done}/{total} episodes | elapsed {elapsed} | eta {eta}"
            progress.console.print(line, soft_wrap=True, markup=False, highlight=False)
            self.shown_at = now

    def close(self) -> None:
        self.flush(force=True)

    def flush(self, force: bool) -> None:
        if self.pending is None:
            return
        step, status, at = self.pending
        due = step in (self.first, self.total) or step % self.every == 0 or at - self.shown_at >= self.seconds
        if force or due:
            self.pending = None
            self._show(step, status, at)

    def _show(self, step: int, status: str, at: float) -> None:
        first_step, first_at = self.first_done or (step, at)
        eta = clock((at - first_at) / (step - first_step) * (self.total - step)) if step > first_step else "-"
        line = (f"{job_tag()}meta-train step {step}/{self.total} ({100 * step / self.total:.0f}%) | elapsed "
                f"{clock(at - self.started)} | eta {eta} | {status}")  # fmt: skip
        progress.console.print(line, soft_wrap=True, markup=False, highlight=False)
        self.shown_at = at


class LiveBar:
    """Progress on a terminal: a rich bar with step/total, elapsed, ETA and the current status."""

    def __init__(self, total_steps: int, start_step: int = 0) -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{job_tag()}meta-train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=progress.console,
        )
        self.task = self.progress.add_task("meta-train", total=total_steps, completed=start_step, status="")
        self.status = self.val_status = ""

    def step(self, step: int, status: str) -> None:
        self.progress.start()  # idempotent: shown from the first step on
        self.status = status
        self.progress.update(self.task, completed=step, status=status + self.val_status)

    def validating(self, step: int, done: int, total: int) -> None:
        self.progress.update(self.task, status=f"{self.status} | validating {done}/{total}")

    def validation(self, step: int, result: str) -> None:
        self.val_status = f" | val {result}"
        self.progress.update(self.task, status=self.status + self.val_status)

    def close(self) -> None:
        self.progress.stop()


class RunReporter:
    """TensorBoard events under `log_dir`, and progress over the outer steps: a rich bar on a terminal, whole lines
    now and then where stdout is not one (a log)."""

    def __init__(self, log_dir: Path | None, total_steps: int, start_step: int = 0) -> None:
        """`log_dir` None: report nothing (under torchrun, every process but rank 0)."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.progress = None, None
        if log_dir is None:
            return
        # a resumed run hides what the stopped one logged after its checkpoint, and goes on from there
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)
        shown = LiveBar if live_bars() else LogLines
        self.progress: LiveBar | LogLines | None = shown(total_steps, start_step)

    def __enter__(self) -> RunReporter:
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.progress.close()
            self.writer.close()  # a run that stops early still flushes its events

    def log_train(self, step: int, stats: list[TaskStats], lr: float, grad_norm: float) -> None:
        if self.writer is None:
            return
        scalars = {"train/outer_lr": lr, "train/grad_norm": grad_norm}
        for name in ("loss_after", "acc_after", "loss_before", "acc_before"):  # None: not scored (a rating's acc)
            if getattr(stats[0], name) is not None:
                scalars[f"train/{name}"] = _mean([getattr(s, name) for s in stats])
        for k in range(len(stats[0].inner_losses)):
            scalars[f"inner/loss_step_{k}"] = _mean([s.inner_losses[k] for s in stats])
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        if "train/acc_after" in scalars:
            self.progress.step(step, f"loss {scalars['train/loss_after']:.3f} acc {scalars['train/acc_after']:.2f}")
        elif "train/loss_after" in scalars:
            self.progress.step(step, f"loss {scalars['train/loss_after']:.3f}")
        else:
            self.progress.step(step, f"grad norm {grad_norm:.3f}")

    def validating(self, step: int) -> Callable[[int, int], None]:
        """`advance(done, total)` for the validation at `step`: shown in the bar's status, or in a log line when it
        runs long."""
        if self.writer is None:
            return lambda done, total: None
        return lambda done, total: self.progress.validating(step, done, total)

    def log_validation(self, step: int, scores: dict[str, EvalResult], selected: str) -> None:
        """Every validation score (by name of `config.METRICS`); the progress shows the one that picks the best."""
        if self.writer is None:
            return
        for metric, result in scores.items():
            self.writer.add_scalar(f"val/{METRICS[metric].short}", result.mean, step)
            self.writer.add_scalar(f"val/{METRICS[metric].short}_ci95", result.ci95, step)
        shown = "" if selected == "accuracy" else f"{METRICS[selected].header} "
        self.progress.validation(step, f"{shown}{scores[selected]}")

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        if self.writer is None:
            return
        self.writer.add_hparams(hparams, metrics, run_name=".")

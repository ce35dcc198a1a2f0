"""What a run shows: the config as a tree, a live progress bar (plain lines in a log), TensorBoard scalars and a
results table."""

from __future__ import annotations

import contextlib
import datetime
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from metarun.algorithms import TaskStats
from metarun.config import group_options
from metarun.stats import METRICS, EvalResult
from metarun.threads import SWEEP_JOBS, choose_threads, sharing_processes

console = Console()
METRIC_HEADERS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1"}  # as shown
TITLE_ORDER = ("experiment", "tuning", "budget", "model", "algo", "task", "data", "device")


def _tree(node, tree: Tree) -> Tree:
    for key, value in node.items():
        if isinstance(value, dict):
            _tree(value, tree.add(f"[bold]{key}"))
        else:
            tree.add(f"{key}: [cyan]{value}")
    return tree


def print_config(cfg: DictConfig, saved_in_sweeps: bool = False, chosen: dict | None = None) -> None:
    """The config as a tree, headed by the options Hydra chose (the `tuning` file among them) when it composed, or
    by `chosen` (a saved run's own, for metarun-eval). With `saved_in_sweeps` (`cfg` is what Hydra saved in the
    job's folder), a sweep's job shows the heading and that file instead, so that the jobs' progress stays readable."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if chosen is None and hydra_cfg is not None:
        chosen = {k: v for k, v in hydra_cfg.runtime.choices.items() if v and not k.startswith("hydra/")}
        if chosen.get("tuning") not in group_options("tuning"):
            chosen.pop("tuning", None)  # an optional default Hydra records even when no such file exists
        first = [k for k in TITLE_ORDER if k in chosen]  # the presets first, then the main parts
        chosen = {k: chosen[k] for k in [*first, *sorted(set(chosen) - set(first))]}
    title = "[bold]config" + (" [dim](" + ", ".join(f"{k}={v}" for k, v in chosen.items()) + ")" if chosen else "")
    shown = OmegaConf.to_container(cfg, resolve=True)
    if "device" in shown:  # the thread count chosen, and from what, where the config leaves it to metarun
        threads = choose_threads(shown["device"]["threads"])
        shown["device"]["threads"] = f"{threads.threads} ({threads.why})"
    if saved_in_sweeps and hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.output_subdir:
        saved = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml"
        threads = f" [dim]| threads {shown['device']['threads']}[/dim]" if "device" in shown else ""
        console.print(f"{title}[/dim] in full: {saved}{threads}", highlight=False, soft_wrap=True)  # a path to copy
        return
    console.print(_tree(shown, Tree(title)))


def in_sweep() -> bool:
    """Whether this process runs a sweep's jobs (each then says less, and the sweep says where it all went)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def live_bars() -> bool:
    """Bars that redraw in place: on a terminal that no other sweep job draws on at the same time."""
    return console.is_terminal and sharing_processes()[1] != SWEEP_JOBS


def job_tag() -> str:
    """`job N: ` before a sweep job's progress, whose lines may interleave with other jobs' (joblib); else ''."""
    return f"job {HydraConfig.get().job.num}: " if in_sweep() else ""


def print_where(label: str, folder: Path, uses: Sequence[tuple[str, str]] = ()) -> None:
    """Where a command wrote (`label`: run folder, sweep folder, ...), and the commands that use it, each with what
    it is for."""
    console.print(f"[bold]{label}:[/bold] {folder}", highlight=False, soft_wrap=True)  # a path to copy
    for command, what in uses:
        console.print(f"  {command}   [dim]# {what}", highlight=False, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second, once rich has measured it."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.3g}/s" if task.speed else "", style="progress.data.speed")


@contextlib.contextmanager
def phase(name: str, shown: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Progress through a long phase (the meta-test's episodes), told by calling the yielded `advance(done, total)`:
    a bar with rate and ETA on a terminal; in a log, a line at every tenth, with the time it took and the ETA.
    Not `shown`: nothing (a phase too short to be worth a bar)."""
    if console.quiet or not shown:
        yield lambda done, total: None
        return
    if live_bars():
        columns = (TextColumn(f"[bold]{job_tag()}{name}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(name, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    started, tenths = time.monotonic(), set()

    def advance(done: int, total: int) -> None:
        tenth = 10 * done // total
        if tenth > 0 and tenth not in tenths:
            tenths.add(tenth)
            elapsed = time.monotonic() - started
            eta, rate = _clock(elapsed / done * (total - done)), done / max(elapsed, 1e-9)
            console.print(f"{job_tag()}{name} {done}/{total} ({100 * done // total}%) | {rate:.3g}/s | elapsed "
                          f"{_clock(elapsed)} | eta {eta}", highlight=False, soft_wrap=True)  # fmt: skip

    yield advance


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))  # 0:01:05, as rich's bar shows times


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
        eta = _clock((at - first_at) / (step - first_step) * (self.total - step)) if step > first_step else "-"
        line = (f"{job_tag()}meta-train step {step}/{self.total} ({100 * step / self.total:.0f}%) | elapsed "
                f"{_clock(at - self.started)} | eta {eta} | {status}")  # fmt: skip
        console.print(line, soft_wrap=True, markup=False, highlight=False)
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
            console=console,
        )
        self.task = self.progress.add_task("meta-train", total=total_steps, completed=start_step, status="")
        self.status = self.val_status = ""

    def step(self, step: int, status: str) -> None:
        self.progress.start()  # idempotent: shown from the first step on
        self.status = status
        self.progress.update(self.task, completed=step, status=status + self.val_status)

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
        if stats[0].loss_after is not None:
            scalars["train/loss_after"] = _mean([s.loss_after for s in stats])
            scalars["train/acc_after"] = _mean([s.acc_after for s in stats])
        if stats[0].loss_before is not None:
            scalars["train/loss_before"] = _mean([s.loss_before for s in stats])
            scalars["train/acc_before"] = _mean([s.acc_before for s in stats])
        for k in range(len(stats[0].inner_losses)):
            scalars[f"inner/loss_step_{k}"] = _mean([s.inner_losses[k] for s in stats])
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        if "train/loss_after" in scalars:
            self.progress.step(step, f"loss {scalars['train/loss_after']:.3f} acc {scalars['train/acc_after']:.2f}")
        else:
            self.progress.step(step, f"grad norm {grad_norm:.3f}")

    def log_validation(self, step: int, scores: dict[str, EvalResult], selected: str) -> None:
        """Every validation score (by name of `config.METRICS`); the progress shows the one that picks the best."""
        if self.writer is None:
            return
        for metric, result in scores.items():
            self.writer.add_scalar(f"val/{METRICS[metric]}", result.mean, step)
            self.writer.add_scalar(f"val/{METRICS[metric]}_ci95", result.ci95, step)
        shown = "" if selected == "accuracy" else f"{METRIC_HEADERS[selected]} "
        self.progress.validation(step, f"{shown}{scores[selected]}")

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        if self.writer is None:
            return
        self.writer.add_hparams(hparams, metrics, run_name=".")


def print_results(title: str, rows: list[tuple[str, EvalResult | dict[str, EvalResult]]]) -> None:
    """One row per split or task: an EvalResult is its accuracy; a dict gives results by metric name (those of
    `config.METRICS`), one column each for the metrics any row has (a row without one leaves its cell blank)."""
    rows = [(name, result if isinstance(result, dict) else {"accuracy": result}) for name, result in rows]
    metrics = [m for m in METRIC_HEADERS if any(m in results for _, results in rows)]
    table = Table(title=title)
    table.add_column("split", no_wrap=True)
    for metric in metrics:
        table.add_column(f"{METRIC_HEADERS[metric]} % (95% CI)", justify="right")
    table.add_column("episodes", justify="right")
    for name, results in rows:
        cells = [str(results[m]) if m in results else "" for m in metrics]
        table.add_row(name, *cells, str(next(iter(results.values())).episodes))
    console.print(table)

"""What a run shows: the config as a tree, a live progress bar (plain lines in a log), TensorBoard scalars and a
results table."""

from __future__ import annotations

import contextlib
import datetime
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

from metarun.config import group_options
from metarun.stats import METRICS, EvalResult
from metarun.threads import SWEEP_JOBS, choose_threads, sharing_processes

console = Console()
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


def per_second(rate: float) -> str:
    """A rate as people read it: 1150/s, 4.2/s, 0.031/s."""
    return f"{rate:.0f}/s" if rate >= 100 else f"{rate:.2g}/s" if rate < 1 else f"{rate:.1f}/s"


class RateColumn(ProgressColumn):
    """Items per second, once rich has measured it."""

    def render(self, task) -> Text:
        return Text(per_second(task.speed) if task.speed else "", style="progress.data.speed")


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
            eta, rate = clock(elapsed / done * (total - done)), done / max(elapsed, 1e-9)
            console.print(f"{job_tag()}{name} {done}/{total} ({100 * done // total}%) | {per_second(rate)} | elapsed "
                          f"{clock(elapsed)} | eta {eta}", highlight=False, soft_wrap=True)  # fmt: skip

    yield advance


def clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))  # 0:01:05, as rich's bar shows times


def print_results(title: str, rows: list[tuple[str, EvalResult | dict[str, EvalResult]]],
                  shown: Sequence[str] = tuple(METRICS)) -> None:  # fmt: skip
    """One row per split or task: an EvalResult is its accuracy; a dict gives results by metric name (those of
    `config.METRICS`), one column each for the metrics of `shown` any row has (a row without one leaves its cell
    blank; metrics.json holds them all)."""
    rows = [(name, result if isinstance(result, dict) else {"accuracy": result}) for name, result in rows]
    metrics = [m for m in METRICS if m in shown and any(m in results for _, results in rows)]
    table = Table(title=title)
    table.add_column("split", no_wrap=True)
    for metric in metrics:
        percent = " %" if METRICS[metric].percent else ""
        table.add_column(f"{METRICS[metric].header}{percent} (95% CI)", justify="right")
    table.add_column("episodes", justify="right")
    for name, results in rows:
        cells = [str(results[m]) if m in results else "" for m in metrics]
        table.add_row(name, *cells, str(next(iter(results.values())).episodes))
    console.print(table)

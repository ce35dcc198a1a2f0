"""`metarun-report`: a sweep (or several runs) as a Markdown table and PNG plots, in one report folder.

    metarun-report outputs/multirun/2026-11-29/10-00-00-ab12cd        # writes outputs/multirun/.../report/
    metarun-report outputs/2026-11-29/10-00-00-ab12cd outputs/2026-11-29/11-30-00-ef34gh --out outputs/report

The table has one row per combination of the swept settings (the command-line overrides that differ between the
finished runs, `.hydra/overrides.yaml`), seeds aggregated: the mean test accuracy over seeds with a 95% interval,
over the test episodes for one seed (metrics.json's own) and a Student-t interval of the per-seed means for several.
The plots (matplotlib, `pip install 'metarun[report]'`): test accuracy against shots per algorithm, validation
accuracy against outer step (the TensorBoard events) and test accuracy against meta-training time (timing.json).
Failed jobs (error.txt), unfinished runs and repeats of a tabled run's seed are listed, not tabled. The table
code is also what scripts/results_table.py and scripts/benchmark.py print.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metarun.config import METRICS
from metarun.stats import half_width_95

NOT_SWEPT = ("seed", "train.resume")  # seeds are aggregated; a resume continues the same run
IDENTITY = {"algo": "algo", "model": "model", "task": "task", "data": "data", "task.n_way": "n_way",
            "task.k_shot": "k_shot", "seed": "seed"}  # fmt: skip  # an override key -> its metrics.json entry
PLOTS = {
    "accuracy_vs_shots.png": "Test accuracy against shots",
    "val_accuracy_vs_step.png": "Validation accuracy against outer step",
    "accuracy_vs_time.png": "Test accuracy against meta-training time",
}


@dataclass(frozen=True)
class Interval:
    """A mean with the half-width of its 95% interval (None: no interval) and what the interval is over."""

    mean: float
    half_width: float | None
    over: str  # "episodes" (one seed: metrics.json's interval over test episodes) or "seeds"


def across_seeds(means: Sequence[float], episode_half_width: float | None = None) -> Interval:
    """The mean of the per-seed means with its 95% interval: with one seed that run's own interval over its test
    episodes (`episode_half_width`), with several a Student-t interval of the per-seed means (n - 1 degrees of
    freedom, the sample standard deviation)."""
    mean = sum(means) / len(means)
    if len(means) == 1:
        return Interval(mean, episode_half_width, "episodes")
    return Interval(mean, half_width_95(means), "seeds")


@dataclass
class Run:
    """One run folder as its files say: its overrides (`.hydra/overrides.yaml`, else its metrics.json identity),
    its metrics.json and timing.json (None until it finished), and error.txt (a failed sweep job)."""

    folder: Path
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict | None = None
    timing: dict | None = None
    error: str | None = None
    _hydra: dict = field(default_factory=dict, repr=False)  # the .hydra/ files read so far

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def meta_train_seconds(self) -> float | None:
        return None if self.timing is None else self.timing.get("meta_train_seconds")

    @property
    def val_score(self) -> tuple[str, float] | None:
        """(the validation score that picked best.pt, its best value), from metrics.json; None when absent."""
        select_by = (self.metrics or {}).get("select_by", "accuracy")
        value = (self.metrics or {}).get(f"val_{METRICS[select_by]}")
        return None if value is None else (select_by, value)

    def setting(self, key: str) -> str:
        """The value of an override key for this run: as typed when it was given, else the run's own (its
        metrics.json identity, the option Hydra chose for a config group, or `.hydra/config.yaml`), else `-`."""
        if key in self.overrides:
            return self.overrides[key]
        if self.metrics is not None and IDENTITY.get(key) in self.metrics:
            return str(self.metrics[IDENTITY[key]])
        choices = self._hydra_file("hydra.yaml").get("hydra", {}).get("runtime", {}).get("choices") or {}
        if key in choices:
            return "-" if choices[key] is None else str(choices[key])
        value = self._hydra_file("config.yaml")
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return "-" if value is None or isinstance(value, dict) else str(value)

    def _hydra_file(self, name: str) -> dict:
        """`.hydra/<name>` as read (once), {} when absent."""
        if name not in self._hydra:
            path = self.folder / ".hydra" / name
            self._hydra[name] = (_yaml(path) if path.is_file() else None) or {}
        return self._hydra[name]

    def val_curve(self) -> list[tuple[int, float]]:
        """(outer step, validation accuracy) from the run's TensorBoard events, read by TensorBoard's own reader
        (which drops what a resumed run logged over); empty for runs that do not meta-train."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        folder = self.folder / "tensorboard"
        if not folder.is_dir():
            return []
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
        if "val/acc" not in events.Tags()["scalars"]:
            return []
        return [(e.step, e.value) for e in events.Scalars("val/acc")]


def _yaml(path: Path):
    import yaml  # PyYAML: OmegaConf's own dependency

    return yaml.safe_load(path.read_text())


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """`key=value` overrides as {key: value}; `+key`/`++key` count as `key`, a deletion `~key` as `key: ~`."""
    parsed = {}
    for line in lines:
        line = str(line)
        if line.startswith("~"):
            parsed[line[1:].split("=", 1)[0]] = "~"
            continue
        key, _, value = line.lstrip("+").partition("=")
        parsed[key] = value
    return parsed


def load_run(folder: Path) -> Run:
    run = Run(Path(folder))
    overrides = run.folder / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        run.overrides = parse_overrides(_yaml(overrides) or [])
    if (run.folder / "metrics.json").is_file():
        run.metrics = json.loads((run.folder / "metrics.json").read_text())
        if not overrides.is_file():  # started from Python (metarun.run.run): its main choices stand in
            run.overrides = {key: str(run.metrics[entry]) for key, entry in IDENTITY.items() if entry in run.metrics}
    if (run.folder / "timing.json").is_file():
        run.timing = json.loads((run.folder / "timing.json").read_text())
    if (run.folder / "error.txt").is_file():
        run.error = (run.folder / "error.txt").read_text().strip()
    return run


def is_run_folder(folder: Path) -> bool:
    """A metarun run's folder: its metrics.json (not one of metarun-eval, which names the run it scored), a failed
    sweep job's error.txt, or the `.hydra/overrides.yaml` a run writes first."""
    metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            return "run" not in json.loads(metrics.read_text())
        except (OSError, ValueError):
            return False
    return (folder / "error.txt").is_file() or (folder / ".hydra" / "overrides.yaml").is_file()


class NoRuns(Exception):
    """A folder given to metarun-report that holds no runs."""


def find_runs(folders: Sequence[Path]) -> list[Run]:
    """Every run in `folders`: each is a run folder itself, or a folder (a sweep, `outputs/`) with run folders
    anywhere below it. Raises NoRuns naming the first folder that holds none."""
    runs: dict[Path, Run] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise NoRuns(f"{folder} is not a folder.")
        if is_run_folder(folder):
            found = [folder]
        else:
            marks = [*folder.rglob("metrics.json"), *folder.rglob("error.txt"), *folder.rglob(".hydra/overrides.yaml")]
            candidates = {m.parent.parent if m.parent.name == ".hydra" else m.parent for m in marks}
            found = sorted(c for c in candidates if is_run_folder(c))
        if not found:
            raise NoRuns(f"{folder} holds no metarun runs.")
        for path in found:
            runs.setdefault(path.resolve(), load_run(path))
    return list(runs.values())


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """The override keys whose values differ between `runs` (in the order they were first given), leaving out
    `seed` (aggregated), `hydra.*` (where a run wrote) and `train.resume`."""
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    keys = [k for k in keys if k not in NOT_SWEPT and not k.startswith("hydra.")]
    return [k for k in keys if len({run.setting(k) for run in runs}) > 1]


def common_settings(runs: Sequence[Run]) -> list[str]:
    """The overrides every run shares (`key=value`), beside the swept ones."""
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    keys = [k for k in keys if k not in NOT_SWEPT and not k.startswith("hydra.")]
    shared = [k for k in keys if all(k in run.overrides for run in runs) and len({r.setting(k) for r in runs}) == 1]
    return [f"{k}={runs[0].setting(k)}" for k in shared]


def _natural(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


@dataclass
class Row:
    """One table row: the runs (seeds) of one combination of settings, aggregated."""

    settings: dict[str, str]
    runs: list[Run]
    repeats: list[Run] = field(default_factory=list)  # runs of a seed already in `runs`: not counted twice

    @property
    def test(self) -> Interval:
        return across_seeds([r.metrics["test_acc"] for r in self.runs], self.runs[0].metrics.get("test_ci95"))

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def test_episodes(self) -> str:
        return "/".join(dict.fromkeys(str(r.metrics.get("test_episodes")) for r in self.runs))

    @property
    def val_score(self) -> tuple[str, float] | None:
        """The runs' mean best validation score, if they all recorded one and were selected by the same score."""
        scores = [r.val_score for r in self.runs]
        if None in scores or len({name for name, _ in scores}) > 1:
            return None
        return scores[0][0], sum(value for _, value in scores) / len(scores)

    @property
    def meta_train_seconds(self) -> float | None:
        values = [r.meta_train_seconds for r in self.runs]
        return None if None in values else sum(values) / len(values)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or self.runs[0].setting("algo")

    def numbers(self) -> dict:
        """The row's aggregates as plain values (what benchmark.json stores)."""
        test, (select_by, val) = self.test, self.val_score or (None, None)
        return {"seeds": self.seeds, "test_acc": test.mean, "test_ci95": test.half_width, "test_ci95_over": test.over,
                "test_episodes": self.runs[0].metrics.get("test_episodes"), "select_by": select_by, "val_score": val,
                "meta_train_seconds": self.meta_train_seconds}  # fmt: skip


def group_runs(runs: Sequence[Run], settings: Callable[[Run], dict], sort: bool = True) -> list[Row]:
    """The finished runs grouped by `settings(run)`, one row each: in natural order of the values (numbers as
    numbers), or with `sort=False` in the order of their first run."""
    groups: dict[tuple, Row] = {}
    for run in runs:
        if run.finished:
            shown = {k: str(v) for k, v in settings(run).items()}
            groups.setdefault(tuple(shown.items()), Row(shown, [])).runs.append(run)
    for row in groups.values():
        _one_run_per_seed(row)
    if not sort:
        return list(groups.values())
    return [groups[key] for key in sorted(groups, key=lambda key: [_natural(v) for _, v in key])]


def _one_run_per_seed(row: Row) -> None:
    """Keep the newest run (by its metrics.json's time) of each known seed in `row.runs` and move the others to
    `row.repeats`: the same settings and seed run twice are one sample, and counting both would narrow the interval
    across seeds. Runs of an unknown seed all stay."""
    newest = {run.setting("seed"): run for run in sorted(row.runs, key=_finished_at)}
    repeats = [run for run in row.runs if run.setting("seed") != "-" and newest[run.setting("seed")] is not run]
    row.runs, row.repeats = [run for run in row.runs if all(run is not r for r in repeats)], repeats


def _finished_at(run: Run) -> float:
    """When its metrics.json was written; 0 for a run made in memory (those keep their order)."""
    path = run.folder / "metrics.json"
    return path.stat().st_mtime if path.is_file() else 0.0


def sweep_rows(runs: Sequence[Run]) -> list[Row]:
    """One row per combination of the swept settings of the finished `runs`."""
    keys = swept_keys([r for r in runs if r.finished])
    return group_runs(runs, lambda run: {k: run.setting(k) for k in keys})


def percent(interval: Interval) -> str:
    """`mean ± half-width` in percent; the mean alone without an interval."""
    text = f"{100 * interval.mean:.1f}"
    return text if interval.half_width is None else f"{text} ± {100 * interval.half_width:.1f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def interval_header(rows: Sequence[Row], short: bool = False) -> str:
    """What the accuracy's ± is, in words: over test episodes (one seed), across seeds, or each by row."""
    over = {row.test.over for row in rows}
    if over == {"episodes"}:
        return "test accuracy % (95% CI over test episodes)" if short else "test accuracy % ± 95% CI over test episodes"
    if over == {"seeds"}:
        if short:
            return "test accuracy % (95% CI across seeds)"
        return "test accuracy %, mean over seeds ± 95% CI across seeds (Student-t, per-seed means)"
    if short:
        return "test accuracy % (95% CI: one seed over episodes, else across seeds)"
    return "test accuracy % ± 95% CI (one seed: over its test episodes; several: Student-t of the per-seed means)"


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table: the settings, then the aggregated numbers."""
    columns = list(rows[0].settings) if rows else []
    header = [*columns, interval_header(rows), "seeds", "test episodes", "best validation %",
              "meta-training time per run"]  # fmt: skip
    numeric = [all(_natural(row.settings[c])[0] == 0 for row in rows) for c in columns]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---:" if n else "---" for n in numeric] + ["---:"] * 5) + " |"]  # fmt: skip
    for row in rows:
        cells = [*row.settings.values(), percent(row.test), str(row.seeds), row.test_episodes, val_cell(row.val_score),
                 duration(row.meta_train_seconds)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def val_cell(score: tuple[str, float] | None) -> str:
    """A best validation score as a table cell, named when it is not accuracy (`eval.select_by`)."""
    if score is None:
        return "-"
    name, value = score
    return f"{100 * value:.1f}" + ("" if name == "accuracy" else f" ({name.replace('_', ' ')})")


def not_in_table(runs: Sequence[Run], rows: Sequence[Row], folders: Sequence[Path]) -> str:
    """The failed, the unfinished and the repeated runs as Markdown lists ('' when there are none)."""
    failed = [r for r in runs if not r.finished and r.error is not None]
    unfinished = [r for r in runs if not r.finished and r.error is None]
    resumable, without_checkpoint = [], []
    for run in unfinished:  # each run's last.pt looked for once
        (resumable if (run.folder / "checkpoints" / "last.pt").is_file() else without_checkpoint).append(run)
    repeats = [(run, row) for row in rows for run in row.repeats]
    text = ""
    if failed:
        text += f"Failed runs ({len(failed)}, not in the table):\n\n"
        text += "".join(f"- `{_relative(r.folder, folders)}`: {_first_line(r.error)}\n" for r in failed) + "\n"
    if resumable:
        text += (f"Unfinished runs ({len(resumable)}, not in the table: still running, or stopped; "
                 "`metarun <its overrides> train.resume=<folder>` continues one):\n\n")  # fmt: skip
        text += "".join(f"- `{_relative(r.folder, folders)}`\n" for r in resumable) + "\n"
    if without_checkpoint:
        text += (f"Runs without a checkpoint ({len(without_checkpoint)}, not in the table: still starting, or stopped "
                 "before their first validation; each one's cli.log says why):\n\n")  # fmt: skip
        text += "".join(f"- `{_relative(r.folder, folders)}`\n" for r in without_checkpoint) + "\n"
    if repeats:
        text += (f"Repeated runs ({len(repeats)}, not in the table: the settings and seed of a newer run in the "
                 "table, which counts that seed once):\n\n")  # fmt: skip
        text += "".join(f"- `{_relative(r.folder, folders)}` (seed {r.metrics.get('seed')}, {row.label})\n"
                        for r, row in repeats) + "\n"  # fmt: skip
    return text


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "(error.txt is empty)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def runs_table(runs: Sequence[Run], folders: Sequence[Path]) -> str:
    """Every finished run on its own: the folder (relative to the folder given), seed, accuracies, time."""
    lines = [
        "| run | seed | test accuracy % | best validation % | meta-training time |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        if run.finished:
            m = run.metrics
            name = _relative(run.folder, folders)
            test = percent(Interval(m["test_acc"], m.get("test_ci95"), "episodes"))
            val = val_cell(run.val_score)
            lines.append(f"| `{name}` | {m.get('seed', '-')} | {test} | {val} | {duration(run.meta_train_seconds)} |")
    return "\n".join(lines) + "\n"


def _relative(path: Path, folders: Sequence[Path]) -> str:
    for folder in folders:
        try:
            return str(path.resolve().relative_to(Path(folder).resolve())) or "."
        except ValueError:
            continue
    return str(path)


# ---- plots (matplotlib, the `report` extra) ----


def _figure(title: str, xlabel: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 100.0))  # accuracy; an interval past 0 or 100 % is cut at the edge
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        if len(handles) > 3:  # beside the plot, not over its lines
            ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
        else:
            ax.legend(fontsize="small")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _errors(rows: Sequence[Row]) -> list[float]:
    return [100 * (row.test.half_width or 0.0) for row in rows]


def plot_shots(rows: Sequence[Row], path: Path) -> None:
    """Test accuracy against task.k_shot, one line per combination of the other swept settings."""
    fig, ax = _figure("Test accuracy against shots", "shots per class (task.k_shot)", _accuracy_label(rows))
    series: dict[str, list[Row]] = {}
    for row in rows:
        others = {k: v for k, v in row.settings.items() if k != "task.k_shot"}
        label = ", ".join(f"{k}={v}" for k, v in others.items()) or row.runs[0].setting("algo")
        series.setdefault(label, []).append(row)
    for i, (label, members) in enumerate(series.items()):
        members = sorted(members, key=lambda r: r.runs[0].metrics["k_shot"])
        dodge = 0.04 * (i - (len(series) - 1) / 2)  # side by side, so that the error bars stay apart
        shots = [r.runs[0].metrics["k_shot"] * (1 + dodge) for r in members]
        ax.errorbar(shots, [100 * r.test.mean for r in members], yerr=_errors(members), marker="o", capsize=4,
                    label=label)  # fmt: skip
    ax.set_xticks(sorted({r.runs[0].metrics["k_shot"] for r in rows}))
    _save(fig, ax, path)


def plot_validation(rows: Sequence[Row], path: Path) -> None:
    """Validation accuracy against outer step: each row's mean over its seeds, the band their range."""
    fig, ax = _figure("Validation accuracy against outer step", "outer step", "validation accuracy %")
    ax.xaxis.get_major_locator().set_params(integer=True)
    for row in rows:
        by_step: dict[int, list[float]] = {}
        for run in row.runs:
            for step, value in run.val_curve():
                by_step.setdefault(step, []).append(100 * value)
        if not by_step:
            continue
        steps = sorted(by_step)
        (line,) = ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], marker="o", markersize=3,
                          label=row.label)  # fmt: skip
        if row.seeds > 1:
            lows, highs = [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]
            ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
    if not ax.lines:
        ax.text(0.5, 0.5, "no validation scalars:\nthese runs do not meta-train", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    elif any(row.seeds > 1 for row in rows):
        ax.set_title("Validation accuracy against outer step (mean over seeds, band: their range)", fontsize="medium")
    _save(fig, ax, path)


def plot_time(rows: Sequence[Row], path: Path) -> None:
    """Test accuracy against the mean meta-training time per run, one point per row."""
    fig, ax = _figure("Test accuracy against meta-training time", "meta-training time per run (s)",
                      _accuracy_label(rows))  # fmt: skip
    timed = [row for row in rows if row.meta_train_seconds is not None]
    for row in timed:
        ax.errorbar([row.meta_train_seconds], [100 * row.test.mean], yerr=_errors([row]), marker="o",
                    capsize=4, linestyle="none", label=row.label)  # fmt: skip
    seconds = [row.meta_train_seconds for row in timed]
    if seconds and min(seconds) > 0 and max(seconds) / min(seconds) > 20:  # seconds next to hours
        ax.set_xscale("log")
        ax.set_xlabel("meta-training time per run (s, log scale)")
    else:
        ax.set_xlim(left=0)
    _save(fig, ax, path)


def _accuracy_label(rows: Sequence[Row]) -> str:
    return interval_header(rows, short=True)


def write_report(folders: Sequence[Path], out: Path) -> tuple[Path, list[Row]]:
    """The report folder: report.md (the table, the plots, every run, the failures) and the PNG plots when
    matplotlib is installed. Returns report.md's path and the table's rows."""
    runs = find_runs(folders)
    rows = sweep_rows(runs)
    finished = [r for r in runs if r.finished]
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# metarun report", "", "From " + ", ".join(f"`{f}`" for f in folders) +
             f": {len(finished)} finished run(s) of {len(runs)}.", ""]  # fmt: skip
    common = common_settings(finished)
    if common:
        lines += ["Every run: " + " ".join(f"`{c}`" for c in common) + ".", ""]
    plots = []
    if rows:
        lines += [table(rows)]
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            lines += ["No plots: matplotlib is not installed (`pip install 'metarun[report]'`).", ""]
        else:
            for name, draw in zip(PLOTS, (plot_shots, plot_validation, plot_time)):
                draw(rows, out / name)
                plots.append(name)
            lines += [f"![{PLOTS[name]}]({name})\n" for name in plots]
        lines += ["## Runs", "", runs_table(runs, folders)]
    skipped = not_in_table(runs, rows, folders)
    if skipped:
        lines += ["## Not in the table", "", skipped]
    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report, rows


def main(argv: Sequence[str] | None = None) -> None:
    from metarun.errors import EXIT_USER_ERROR, report

    parser = argparse.ArgumentParser(prog="metarun-report", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="a sweep folder (metarun -m), or run folders")
    parser.add_argument("--out", type=Path, help="the report folder (default: <first folder>/report)")
    args = parser.parse_args(argv)
    out = args.out or args.folders[0] / "report"
    try:
        path, rows = write_report(args.folders, out)
    except NoRuns as error:
        report(
            f"{error} metarun-report expects a sweep folder (`metarun -m ...` writes one job folder per run in it, "
            "e.g. outputs/multirun/DATE/TIME-ID/0_algo=maml/) or run folders (outputs/DATE/TIME-ID/), each run "
            "folder holding the metrics.json and .hydra/ its run wrote, or error.txt for a failed sweep job.",
            title="metarun-report",
        )
        sys.exit(EXIT_USER_ERROR)
    if rows:
        print(table(rows))
    print(f"report: {path}" + ("" if rows else " (no run finished: it lists the failures)"))
    if not rows:
        sys.exit(1)


if __name__ == "__main__":
    main()

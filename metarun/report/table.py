"""The table: runs grouped into rows by their swept settings, seeds aggregated into a mean with a 95% interval, and
the Markdown tables (the rows, every run, the runs not in the table)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metarun.report.runs import Run
from metarun.results import TEST_ACC, TEST_CI95, TEST_EPISODES
from metarun.stats import half_width_95

NOT_SWEPT = ("seed", "train.resume")  # seeds are aggregated; a resume continues the same run
MIN_SEEDS = 3  # below it an interval across seeds rests on t with 1 d.f. (12.7): wide by construction
FEW_SEEDS_MARK = "†"
FEW_SEEDS_NOTE = (f"{FEW_SEEDS_MARK} interval over 2 seeds (Student t with 1 d.f., t = 12.7): wide by construction; "
                  f"run ≥ {MIN_SEEDS} seeds for a usable one")  # fmt: skip


@dataclass(frozen=True)
class Interval:
    """A mean with the half-width of its 95% interval (None: no interval) and what the interval is over."""

    mean: float
    half_width: float | None
    over: str  # "episodes" (one seed: metrics.json's interval over test episodes) or "seeds"
    seeds: int = 1

    @property
    def few_seeds(self) -> bool:
        """An interval across fewer than MIN_SEEDS seeds: marked with FEW_SEEDS_MARK wherever it is shown."""
        return self.over == "seeds" and self.seeds < MIN_SEEDS


def across_seeds(means: Sequence[float], episode_half_width: float | None = None) -> Interval:
    """The mean of the per-seed means with its 95% interval: with one seed that run's own interval over its test
    episodes (`episode_half_width`), with several a Student-t interval of the per-seed means (n - 1 degrees of
    freedom, the sample standard deviation)."""
    mean = sum(means) / len(means)
    if len(means) == 1:
        return Interval(mean, episode_half_width, "episodes")
    return Interval(mean, half_width_95(means), "seeds", len(means))


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
        return across_seeds([r.metrics[TEST_ACC] for r in self.runs], self.runs[0].metrics.get(TEST_CI95))

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def test_episodes(self) -> str:
        return "/".join(dict.fromkeys(str(r.metrics.get(TEST_EPISODES)) for r in self.runs))

    @property
    def val_score(self) -> tuple[str, float] | None:
        """The runs' mean best validation score, if they all recorded one and were selected by the same score."""
        scores = [r.val_score for r in self.runs]
        if None in scores or len({name for name, _ in scores}) > 1:
            return None
        return scores[0][0], sum(value for _, value in scores) / len(scores)

    @property
    def meta_train_seconds(self) -> float | None:
        return mean_seconds(self.runs)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or self.runs[0].setting("algo")

    def numbers(self) -> dict:
        """The row's aggregates as plain values (what benchmark.json stores)."""
        test, (select_by, val) = self.test, self.val_score or (None, None)
        return {"seeds": self.seeds, "test_acc": test.mean, "test_ci95": test.half_width, "test_ci95_over": test.over,
                "test_episodes": self.runs[0].metrics.get(TEST_EPISODES), "select_by": select_by, "val_score": val,
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


def mean_seconds(runs: Sequence[Run]) -> float | None:
    """The runs' mean meta-training time; None when one has none."""
    values = [r.meta_train_seconds for r in runs]
    return None if None in values else sum(values) / len(values)


def time_cell(runs: Sequence[Run]) -> str:
    """The runs' mean meta-training time; `n/a (resumed)` and the like where one's timing.json is not its own."""
    unknown = list(dict.fromkeys(r.time_unknown for r in runs if r.time_unknown is not None))
    return f"n/a ({', '.join(unknown)})" if unknown else duration(mean_seconds(runs))


def accuracy_cell(interval: Interval) -> str:
    """`percent`, marked when the interval rests on too few seeds (FEW_SEEDS_NOTE says what the mark means)."""
    return percent(interval) + (f" {FEW_SEEDS_MARK}" if interval.few_seeds else "")


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
    """The rows as a Markdown table: the settings, then the aggregated numbers; a footnote under it for the marks."""
    columns = list(rows[0].settings) if rows else []
    header = [*columns, interval_header(rows), "seeds", "test episodes", "best validation %",
              "meta-training time per run"]  # fmt: skip
    numeric = [all(_natural(row.settings[c])[0] == 0 for row in rows) for c in columns]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---:" if n else "---" for n in numeric] + ["---:"] * 5) + " |"]  # fmt: skip
    for row in rows:
        cells = [*row.settings.values(), accuracy_cell(row.test), str(row.seeds), row.test_episodes,
                 val_cell(row.val_score), time_cell(row.runs)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if any(row.test.few_seeds for row in rows):
        lines += ["", FEW_SEEDS_NOTE + "."]
    return "\n".join(lines) + "\n"


def val_cell(score: tuple[str, float] | None) -> str:
    """A best validation score as a table cell, named when it is not accuracy (`eval.select_by`)."""
    if score is None:
        return "-"
    name, value = score
    return f"{100 * value:.1f}" + ("" if name == "accuracy" else f" ({name.replace('_', ' ')})")


def not_in_table(runs: Sequence[Run], rows: Sequence[Row], folders: Sequence[Path]) -> str:
    """The failed, the unreadable, the unfinished and the repeated runs as Markdown lists ('' when there are none)."""

    def name(run: Run) -> str:
        return f"`{_relative(run.folder, folders)}`"

    failed = [r for r in runs if not r.finished and r.error is not None]
    unreadable = [r for r in runs if not r.finished and r.error is None and r.unreadable is not None]
    unfinished = [r for r in runs if not r.finished and r.error is None and r.unreadable is None]
    resumable, without_checkpoint = [], []
    for run in unfinished:  # each run's last.pt looked for once
        (resumable if (run.folder / "checkpoints" / "last.pt").is_file() else without_checkpoint).append(run)
    repeats = [f"{name(run)} (seed {run.metrics.get('seed')}, {row.label})" for row in rows for run in row.repeats]
    return "".join([
        _listed("Failed runs ({n}, not in the table)", [f"{name(r)}: {_first_line(r.error)}" for r in failed]),
        _listed("Unreadable runs ({n}, not in the table: mend or delete the file, or run it again)",
                [f"{name(r)}: {r.unreadable}" for r in unreadable]),
        _listed("Unfinished runs ({n}, not in the table: still running, or stopped; "
                "`metarun <its overrides> train.resume=<folder>` continues one)", [name(r) for r in resumable]),
        _listed("Runs without a checkpoint ({n}, not in the table: still starting, or stopped before their first "
                "validation; each one's cli.log says why)", [name(r) for r in without_checkpoint]),
        _listed("Repeated runs ({n}, not in the table: the settings and seed of a newer run in the table, which "
                "counts that seed once)", repeats),
    ])  # fmt: skip


def _listed(heading: str, items: Sequence[str]) -> str:
    """`heading` (its `{n}` the count) over a Markdown list of `items`; '' without items."""
    if not items:
        return ""
    return heading.format(n=len(items)) + ":\n\n" + "".join(f"- {item}\n" for item in items) + "\n"


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
            test = percent(Interval(m[TEST_ACC], m.get(TEST_CI95), "episodes"))
            val = val_cell(run.val_score)
            lines.append(f"| `{name}` | {m.get('seed', '-')} | {test} | {val} | {time_cell([run])} |")
    return "\n".join(lines) + "\n"


def _relative(path: Path, folders: Sequence[Path]) -> str:
    for folder in folders:
        try:
            return str(path.resolve().relative_to(Path(folder).resolve())) or "."
        except ValueError:
            continue
    return str(path)

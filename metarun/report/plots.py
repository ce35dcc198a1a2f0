"""The plots (matplotlib, the `report` extra): test accuracy against shots and against meta-training time, and
validation accuracy against outer step; each drawn only where its x axis varies (`left_out` says why not)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from metarun.report.table import FEW_SEEDS_MARK, FEW_SEEDS_NOTE, Interval, Row, interval_header
from metarun.results import IDENTITY

K_SHOT = IDENTITY["task.k_shot"]  # the metrics.json entry the shots plot reads
SHOTS, VALIDATION, TIME = "accuracy_vs_shots.png", "val_accuracy_vs_step.png", "accuracy_vs_time.png"
PLOTS = {
    SHOTS: "Test accuracy against shots",
    VALIDATION: "Validation accuracy against outer step",
    TIME: "Test accuracy against meta-training time",
}
MARKERS = "osD^vP*Xph"  # with the colours, so that series stay apart in grey prints too
BAND_ALPHA = 0.12  # light: overlapping bands of several series stay readable
CUT_NOTE = "Error bars cut at 0 / 100 % (the 95% interval reaches past them)"


def left_out(rows: Sequence[Row]) -> dict[str, str]:
    """The plots not drawn for these rows, each with why: their x axis would hold one value, or none."""
    why = {}
    shots = sorted({_shots(row) for row in rows} - {None})
    if len(shots) < 2:
        why[SHOTS] = f"task.k_shot has one value ({shots[0]})" if shots else "no run records task.k_shot"
    if not any(run.val_curve() for row in rows for run in row.runs):
        why[VALIDATION] = "no run logged a validation (TensorBoard `val/acc`)"
    timed = _timed(rows)
    if len(timed) < 2:
        why[TIME] = f"{len(timed)} row(s) with a meta-training time, one point at most"
    return why


def notes(name: str, rows: Sequence[Row]) -> list[str]:
    """What a reader of plot `name` needs beside its axes, in sentences: the band, the † mark, cut error bars and
    the rows it cannot place (the PNG's note and report.md's caption)."""
    if name == VALIDATION:
        banded = any(len(values) > 1 for row in rows for values in _by_step(row).values())
        return ["Line: the mean over seeds; band: their range, where at least 2 seeds validated"] if banded else []
    plotted = _timed(rows) if name == TIME else _with_shots(rows)
    lines = [FEW_SEEDS_NOTE] if any(row.test.few_seeds for row in plotted) else []
    cut = [row.label for row in plotted if _past_edges(row.test)]
    if cut:
        lines.append(f"{CUT_NOTE}: " + ("every row" if len(cut) == len(plotted) else "; ".join(cut)))
    unplotted = [row.label for row in rows if all(row is not p for p in plotted)]
    if unplotted:  # e.g. resumed runs, whose time is n/a in the table
        lines.append("Not shown (no " + ("meta-training time" if name == TIME else "task.k_shot") + "): "
                     + "; ".join(unplotted))  # fmt: skip
    return lines


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


def _save(fig, ax, path: Path, lines: Sequence[str]):
    """Write the figure with its notes under it; returns it (closed to pyplot, still readable)."""
    import matplotlib.pyplot as plt

    low, high = ax.get_ylim()
    ax.set_ylim(max(low, -2.0), min(high, 102.0))  # accuracy; room for the caps of bars that end at 0 or 100
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        if len(handles) > 3:  # beside the plot, not over its lines
            ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
        else:
            ax.legend(fontsize="small")
    if lines:
        text = "\n".join(textwrap.fill(line, 125) for line in lines)
        fig.text(0.01, -0.01, text, fontsize="x-small", va="top", ha="left")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return fig


def _styles(count: int) -> list[tuple[tuple, str]]:
    """A distinct (colour, marker) per series: tab10's colours, tab20's beyond ten series."""
    import matplotlib

    colours = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [(colours(i % colours.N), MARKERS[i % len(MARKERS)]) for i in range(count)]


def _past_edges(interval: Interval) -> bool:
    half = interval.half_width or 0.0
    return interval.mean - half < 0.0 or interval.mean + half > 1.0


def error_bars(intervals: Sequence[Interval]) -> list[list[float]]:
    """The [below, above] lengths of the 95% error bars in percent, cut at 0 and 100 % (CUT_NOTE says so)."""
    means, halves = [100 * i.mean for i in intervals], [100 * (i.half_width or 0.0) for i in intervals]
    return [[min(h, m) for m, h in zip(means, halves)], [min(h, 100 - m) for m, h in zip(means, halves)]]


def _label(label: str, rows: Sequence[Row]) -> str:
    return label + (f" {FEW_SEEDS_MARK}" if any(row.test.few_seeds for row in rows) else "")


def _shots(row: Row):
    return row.runs[0].metrics.get(K_SHOT)


def _with_shots(rows: Sequence[Row]) -> list[Row]:
    return [row for row in rows if _shots(row) is not None]


def _timed(rows: Sequence[Row]) -> list[Row]:
    return [row for row in rows if row.meta_train_seconds is not None]


def plot_shots(rows: Sequence[Row], path: Path):
    """Test accuracy against task.k_shot, one line per combination of the other swept settings."""
    fig, ax = _figure("Test accuracy against shots", "shots per class (task.k_shot)", _accuracy_label(rows))
    series: dict[str, list[Row]] = {}
    for row in _with_shots(rows):
        others = {k: v for k, v in row.settings.items() if k != "task.k_shot"}
        label = ", ".join(f"{k}={v}" for k, v in others.items()) or row.runs[0].setting("algo")
        series.setdefault(label, []).append(row)
    for i, ((label, members), (colour, marker)) in enumerate(zip(series.items(), _styles(len(series)))):
        members = sorted(members, key=_shots)
        dodge = 0.04 * (i - (len(series) - 1) / 2)  # side by side, so that the error bars stay apart
        ax.errorbar([_shots(r) * (1 + dodge) for r in members], [100 * r.test.mean for r in members],
                    yerr=error_bars([r.test for r in members]), color=colour, marker=marker, capsize=4,
                    label=_label(label, members))  # fmt: skip
    ax.set_xticks(sorted({_shots(r) for r in _with_shots(rows)}))  # the swept values themselves
    return _save(fig, ax, path, notes(SHOTS, rows))


def _by_step(row: Row) -> dict[int, list[float]]:
    """Each outer step's validation accuracies in percent, one per seed that validated at it."""
    by_step: dict[int, list[float]] = {}
    for run in row.runs:
        for step, value in run.val_curve():
            by_step.setdefault(step, []).append(100 * value)
    return dict(sorted(by_step.items()))


def _seed_band(ax, by_step: dict[int, list[float]], colour) -> None:
    """The range over seeds where at least two validated: a light band with thin edges, a bar at a lone step."""
    steps = [step for step, values in by_step.items() if len(values) > 1]
    lows, highs = [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]
    if len(steps) == 1:
        ax.vlines(steps, lows, highs, color=colour, alpha=0.4, linewidth=6)
    elif steps:
        ax.fill_between(steps, lows, highs, color=colour, alpha=BAND_ALPHA, linewidth=0)
        for edge in (lows, highs):
            ax.plot(steps, edge, color=colour, alpha=0.5, linewidth=0.6)


def integer_axis(ax, steps: Sequence[int]) -> None:
    """Whole-number ticks on a step axis, and a range of at least one step either side of a lone step."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if steps and max(steps) - min(steps) < 2:  # matplotlib would widen it by 0.1 and tick 1.900-2.100
        ax.set_xlim(min(steps) - 1, max(steps) + 1)


def plot_validation(rows: Sequence[Row], path: Path):
    """Validation accuracy against outer step: each row's mean over its seeds, the band their range."""
    fig, ax = _figure("Validation accuracy against outer step", "outer step", "validation accuracy %")
    curves = [(row, by_step) for row in rows if (by_step := _by_step(row))]
    for (row, by_step), (colour, marker) in zip(curves, _styles(len(curves))):
        steps = list(by_step)
        means = [sum(values) / len(values) for values in by_step.values()]
        lone = len(steps) == 1  # a single validation: a point, drawn large enough to see
        ax.plot(steps, means, color=colour, marker=marker, markersize=8 if lone else 4, linewidth=1.5,
                label=row.label)  # fmt: skip
        _seed_band(ax, by_step, colour)
    integer_axis(ax, sorted({step for _, by_step in curves for step in by_step}))
    return _save(fig, ax, path, notes(VALIDATION, rows))


def plot_time(rows: Sequence[Row], path: Path):
    """Test accuracy against the mean meta-training time per run, one point per row."""
    fig, ax = _figure("Test accuracy against meta-training time", "meta-training time per run (s)",
                      _accuracy_label(rows))  # fmt: skip
    timed = _timed(rows)
    for row, (colour, marker) in zip(timed, _styles(len(timed))):
        ax.errorbar([row.meta_train_seconds], [100 * row.test.mean], yerr=error_bars([row.test]), color=colour,
                    marker=marker, capsize=4, linestyle="none", label=_label(row.label, [row]))  # fmt: skip
    seconds = [row.meta_train_seconds for row in timed]
    if seconds and min(seconds) > 0 and max(seconds) / min(seconds) > 20:  # seconds next to hours
        ax.set_xscale("log")
        ax.set_xlabel("meta-training time per run (s, log scale)")
    else:
        ax.set_xlim(left=0)
    return _save(fig, ax, path, notes(TIME, rows))


DRAW = {SHOTS: plot_shots, VALIDATION: plot_validation, TIME: plot_time}


def _accuracy_label(rows: Sequence[Row]) -> str:
    return interval_header(rows, short=True)

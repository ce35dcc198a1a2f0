"""The plots (matplotlib, the `report` extra): test accuracy against shots and against meta-training time, and
validation accuracy against outer step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metarun.report.table import Row, interval_header
from metarun.results import IDENTITY

K_SHOT = IDENTITY["task.k_shot"]  # the metrics.json entry the shots plot reads

PLOTS = {
    "accuracy_vs_shots.png": "Test accuracy against shots",
    "val_accuracy_vs_step.png": "Validation accuracy against outer step",
    "accuracy_vs_time.png": "Test accuracy against meta-training time",
}


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
        members = sorted(members, key=lambda r: r.runs[0].metrics[K_SHOT])
        dodge = 0.04 * (i - (len(series) - 1) / 2)  # side by side, so that the error bars stay apart
        shots = [r.runs[0].metrics[K_SHOT] * (1 + dodge) for r in members]
        ax.errorbar(shots, [100 * r.test.mean for r in members], yerr=_errors(members), marker="o", capsize=4,
                    label=label)  # fmt: skip
    ax.set_xticks(sorted({r.runs[0].metrics[K_SHOT] for r in rows}))
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

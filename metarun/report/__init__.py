"""`metarun-report`: a sweep (or several runs) as a Markdown table and PNG plots, in one report folder.

    metarun-report outputs/multirun/2026-11-29/10-00-00-ab12cd        # writes outputs/multirun/.../report/
    metarun-report outputs/2026-11-29/10-00-00-ab12cd outputs/2026-11-29/11-30-00-ef34gh --out outputs/report

The table has one row per combination of the swept settings (the command-line overrides that differ between the
finished runs, `.hydra/overrides.yaml`), seeds aggregated: the mean test accuracy over seeds with a 95% interval,
over the test episodes for one seed (metrics.json's own) and a Student-t interval of the per-seed means for several
(marked † under three seeds). The plots (matplotlib: `pip install matplotlib` where metarun is installed), each
drawn only where its x axis varies: test accuracy against shots per algorithm, validation accuracy against outer
step (the TensorBoard events) and test accuracy against meta-training time (timing.json).
Failed jobs (error.txt), unreadable metrics.json, unfinished runs and repeats of a tabled run's seed are listed, not
tabled. The table code is also what scripts/results_table.py and scripts/benchmark.py print.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from metarun.report.plots import DRAW, PLOTS, left_out, notes
from metarun.report.runs import NoRuns, Run, find_runs, load_run
from metarun.report.table import (
    FEW_SEEDS_NOTE,
    Row,
    across_seeds,
    common_settings,
    duration,
    group_runs,
    not_in_table,
    percent,
    runs_table,
    sweep_rows,
    swept_keys,
    table,
)

__all__ = [  # what scripts/ and tests/ import from metarun.report
    "FEW_SEEDS_NOTE", "PLOTS", "NoRuns", "Row", "Run", "across_seeds", "common_settings", "duration", "find_runs",
    "group_runs", "load_run", "main", "not_in_table", "percent", "runs_table", "sweep_rows", "swept_keys", "table",
    "write_report",
]  # fmt: skip


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
    if rows:
        lines += [table(rows), *plot_lines(rows, out), "## Runs", "", runs_table(runs, folders)]
    skipped = not_in_table(runs, rows, folders)
    if skipped:
        lines += ["## Not in the table", "", skipped]
    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report, rows


def plot_lines(rows: Sequence[Row], out: Path) -> list[str]:
    """Draw the plots whose x axis varies into `out`; report.md's lines for them (each with its caption) and for
    those left out, with why."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ["No plots: matplotlib is not installed (`pip install matplotlib` in metarun's environment).", ""]
    skipped = left_out(rows)
    lines = []
    for name, draw in DRAW.items():
        if name not in skipped:
            draw(rows, out / name)
            caption = notes(name, rows)
            lines += [f"![{PLOTS[name]}]({name})", "", *([f"*{'. '.join(caption)}.*", ""] if caption else [])]
    if skipped:
        lines += ["Plots left out: " + "; ".join(f"`{name}` ({why})" for name, why in skipped.items()) + ".", ""]
    return lines


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

"""Print a Markdown table of the runs under a folder: one row per combination of the swept settings, seeds
aggregated (metarun.report's table; `metarun-report` writes it with plots), then the runs that did not finish.

python scripts/results_table.py outputs/readme_quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metarun.report import NoRuns, find_runs, not_in_table, sweep_rows, table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="a sweep folder, or run folders")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.folders)
    except NoRuns as error:
        raise SystemExit(f"{error} Give a metarun run or sweep folder.") from None
    rows = sweep_rows(runs)
    skipped = not_in_table(runs, rows, args.folders)
    print(table(rows) if rows else "No run finished.\n")
    if skipped:
        print(skipped, end="")


if __name__ == "__main__":
    main()

"""Print a Markdown table of the runs under a folder: one row per run, from its metrics.json and timing.json.

python scripts/results_table.py outputs/readme_quickstart
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def percent(mean: float, ci95: float | None) -> str:
    """`mean ± ci95` in percent; the mean alone when there is no interval."""
    return f"{100 * mean:.1f}" + ("" if ci95 is None else f" ± {100 * ci95:.1f}")


def rows(folder: Path) -> list[str]:
    lines = []  # one row per run; a run scored on one episode or task has no interval (null)
    for metrics_path in sorted(folder.glob("**/metrics.json")):
        m = json.loads(metrics_path.read_text())
        timing_path = metrics_path.with_name("timing.json")
        seconds = json.loads(timing_path.read_text())["meta_train_seconds"] if timing_path.is_file() else float("nan")
        lines.append(
            f"| {m['algo']} | {m['model']} | {m['task']} {m['n_way']}-way {m['k_shot']}-shot | {m['data']} | "
            f"{percent(m['test_acc'], m['test_ci95'])} | {m['test_episodes']} | {seconds:.0f} s |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run or sweep folder")
    args = parser.parse_args()
    found = rows(args.folder)
    if not found:
        raise SystemExit(f"no metrics.json under {args.folder}; give a metarun run or sweep folder")
    print("| algo | model | task | data | test accuracy % (95% CI) | test episodes | meta-training time |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    print("\n".join(found))


if __name__ == "__main__":
    main()

"""The class-split protocol (ProtAugment, Dopierre et al., 2021): every published split x shots x algorithm as its own
metarun run, then one table: the mean test accuracy over the splits with a Student-t 95% interval over the splits,
and each split's own accuracy with its interval over its test episodes.

    python scripts/class_splits_benchmark.py --experiment intents_liu --algos prototypes,protonet --shots 1,5
    python scripts/class_splits_benchmark.py --experiment intents_clinc150 --splits 01,02 --doc docs/results.md
    python scripts/class_splits_benchmark.py --experiment intents_liu --root /data/banking77/class_splits

`--root` is the folder of the split folders (default: the preset's `task.class_splits` parent); extra arguments are
metarun overrides for every run. Finished runs (a metrics.json in their folder) are read, not run again.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

from benchmark import METARUN, run_to_the_end  # scripts/benchmark.py, beside this script
from docsection import rewrite_section  # scripts/docsection.py, beside this script
from metarun.config import compose
from metarun.report import load_run
from metarun.stats import half_width_95


def run_split(overrides: list[str], folder: Path) -> dict:
    """The run's metrics.json, from its finished folder or from a new metarun run."""
    if not (folder / "metrics.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "benchmark.log", "a") as log:
            if run_to_the_end([METARUN, *overrides, f"hydra.run.dir={folder}"], log) != 0:
                raise SystemExit(f"{shlex.join(overrides)} failed; see {folder / 'benchmark.log'}")
    return load_run(folder).metrics


def split_root(experiment: str, given: Path | None) -> Path:
    """Where the split folders are: `--root`, else the parent of the preset's own `task.class_splits`."""
    if given is not None:
        return given
    return Path(compose("config", [f"experiment={experiment}"]).task.class_splits).parent


def row(algo: str, shots: int, per_split: dict[str, dict]) -> str:
    means = [100 * m["test_acc"] for m in per_split.values()]
    over = half_width_95(means) if len(means) > 1 else float("nan")
    cells = [f"{100 * m['test_acc']:.1f} ± {100 * m['test_ci95']:.1f}" for m in per_split.values()]
    return f"| {algo} | {shots} | {statistics.mean(means):.1f} ± {over:.1f} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> str:
    split = lambda text: [s for s in text.split(",") if s]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="a class_splits preset: intents_liu, intents_clinc150")
    parser.add_argument("--algos", type=split, default=["prototypes", "protonet"])
    parser.add_argument("--shots", type=lambda t: [int(s) for s in split(t)], default=[1, 5])
    parser.add_argument("--splits", type=split, help="split folder names (default: every folder under --root)")
    parser.add_argument("--root", type=Path, help="the folder of the split folders")
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--out", type=Path, help="default: outputs/class-splits-<experiment>")
    parser.add_argument("--doc", type=Path, help="rewrite this document's class-splits-<experiment> section")
    args, overrides = parser.parse_known_args(argv)
    root = split_root(args.experiment, args.root)
    names = args.splits or sorted(p.name for p in root.iterdir() if p.is_dir())
    out = args.out or Path("outputs") / f"class-splits-{args.experiment}"
    lines = [f"| algo | shots | mean over {len(names)} splits (95% CI over splits) | "
             + " | ".join(f"split {n}" for n in names) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " |"]  # fmt: skip
    for algo in args.algos:
        for shots in args.shots:
            per_split = {}
            for name in names:
                settings = [f"experiment={args.experiment}", f"algo={algo}", f"task.k_shot={shots}",
                            f"task.class_splits={root / name}", f"eval.test_episodes={args.test_episodes}",
                            *overrides]  # fmt: skip
                print(f"{algo}, {shots}-shot, split {name}", flush=True)
                per_split[name] = run_split(settings, out / f"{algo}_{shots}shot_{name}")
            lines.append(row(algo, shots, per_split))
    command = shlex.join(["python", "scripts/class_splits_benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    body = (f"Command: `{command}`  \nRan on {time.strftime('%Y-%m-%d')}; {args.test_episodes} test episodes per "
            f"split, each split its own run (seed 0).\n\n" + "\n".join(lines) + "\n")  # fmt: skip
    if args.doc:
        rewrite_section(args.doc, f"class-splits-{args.experiment}", body)
    print(body)
    return body


if __name__ == "__main__":
    main()

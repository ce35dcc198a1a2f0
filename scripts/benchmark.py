"""Run a matrix of metarun runs and write one results table (Markdown and JSON).

One row per (task family, shots, algorithm) in metarun.report's table (what `metarun-report` writes): mean test
accuracy with its 95% CI (over the test episodes with one seed, a Student-t interval of the per-seed means with
several), best validation accuracy and meta-training wall time. Finished cells (a metrics.json in their run folder)
are read, not rerun, and a stopped cell continues from its last checkpoint (train.resume), so a half-finished
matrix resumes where it stopped.

    python scripts/benchmark.py                       # the default matrix on CLINC150
    python scripts/benchmark.py --quick               # a smoke check in minutes
    python scripts/benchmark.py --doc docs/results.md    # also rewrite that document's results section
    python scripts/benchmark.py --model minilm --algos prototypes,protonet,maml,fomaml,reptile,finetune,scratch
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docsection import rewrite_section  # scripts/docsection.py, beside this script
from metarun.report import Row, Run, group_runs, load_run, table

METARUN = str(Path(sys.executable).with_name("metarun"))
EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"
FAMILY_PRESETS = {"clinc150": {"fewshot_cls": "clinc150_intents", "domain_adapt": "clinc150_domains"}}
console = Console()


@dataclass(frozen=True)
class Cell:
    family: str
    shots: int
    algo: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.family}_{self.shots}shot_{self.algo}_seed{self.seed}"


def cell_preset(cell: Cell, data: str) -> str | None:
    """The cell's `experiment=` preset: `<family preset>_<k>shot` where one exists, else the family's own."""
    family = FAMILY_PRESETS.get(data, {}).get(cell.family)
    per_shot = f"{family}_{cell.shots}shot"
    return per_shot if family and (EXPERIMENTS / f"{per_shot}.yaml").is_file() else family


def cell_overrides(cell: Cell, args: argparse.Namespace) -> list[str]:
    preset = cell_preset(cell, args.data)
    base = [f"experiment={preset}"] if preset else [f"task={cell.family}", f"data={args.data}"]
    budget = [f"train.outer_steps={args.outer_steps}"] if args.outer_steps else []
    return [*base, f"algo={cell.algo}", f"model={args.model}", f"task.k_shot={cell.shots}", f"seed={cell.seed}",
            f"eval.test_episodes={args.test_episodes}", *budget, *args.override]  # fmt: skip


def run_cell(cell: Cell, args: argparse.Namespace, folder: Path) -> Run:
    """The cell's run, from its finished run folder or from a new metarun run."""
    if not (folder / "metrics.json").is_file():
        stopped = (folder / "checkpoints" / "last.pt").is_file()
        where = f"train.resume={folder}" if stopped else f"hydra.run.dir={folder}"
        command = [METARUN, *cell_overrides(cell, args), where]
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "benchmark.log", "a") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"cell {cell.name} failed (exit {done.returncode}); see {folder / 'benchmark.log'}")
    return load_run(folder)


def aggregate(results: list[tuple[Cell, Run]]) -> list[Row]:
    """One row per (task family, shots, algorithm), its seeds aggregated, in the matrix's order."""
    cells = {id(run): cell for cell, run in results}

    def settings(run: Run) -> dict:
        cell = cells[id(run)]
        return {"task family": cell.family, "shots": cell.shots, "algo": cell.algo}

    return group_runs([run for _, run in results], settings, sort=False)


def as_json(row: Row) -> dict:
    """A row of benchmark.json."""
    family, shots, algo = row.settings.values()
    return {"family": family, "shots": int(shots), "algo": algo, **row.numbers()}


def markdown(rows: list[Row], header: dict) -> str:
    lines = [
        f"Command: `{header['command']}`  ",
        f"Ran on: {header['machine']}, torch {header['torch']}, {header['date']}; model `{header['model']}`, "
        f"data `{header['data']}`, {header['test_episodes']} test episodes per run (5-way, 15 queries per class).  ",
        f"One cell by hand (the last one): `{header['one_cell']}`",
        "",
    ]
    return "\n".join(lines) + "\n" + table(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    split = lambda text: [s for s in text.split(",") if s]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", type=split, default=["fewshot_cls", "domain_adapt"])
    parser.add_argument("--shots", type=lambda t: [int(s) for s in split(t)], default=[1, 5])
    parser.add_argument("--algos", type=split, default=["maml", "fomaml", "reptile", "protonet", "finetune", "scratch"])
    parser.add_argument("--model", default="small")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--seeds", type=lambda t: [int(s) for s in split(t)], default=[0])
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--outer-steps", type=int, help="meta-training budget per run (default: the preset's)")
    parser.add_argument("--quick", action="store_true", help="tiny model and budget: a smoke check of the matrix")
    parser.add_argument("--out", type=Path, help="default: outputs/benchmark, or outputs/benchmark-<model>")
    parser.add_argument("--finished-only", action="store_true", help="table the finished cells, run none")
    parser.add_argument("--doc", type=Path, help="rewrite this document's benchmark section (docs/results.md)")
    parser.add_argument(
        "override", nargs="*", help="extra metarun overrides for every cell, e.g. train.outer_steps=500"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.test_episodes, args.outer_steps = "tiny", min(args.test_episodes, 100), args.outer_steps or 40
        args.override = ["eval.val_interval=20", "eval.val_episodes=20", *args.override]
    args.out = args.out or Path("outputs/benchmark" if args.model == "small" else f"outputs/benchmark-{args.model}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    cells = [Cell(*c) for c in itertools.product(args.families, args.shots, args.algos, args.seeds)]
    results, missing = [], []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("benchmark", total=len(cells))
        for cell in cells:
            folder = args.out / "runs" / cell.name
            if args.finished_only and not (folder / "metrics.json").is_file():
                missing.append(cell.name)
            else:
                progress.update(task, description=f"running {cell.name}")
                results.append((cell, run_cell(cell, args, folder)))
            progress.advance(task)
    import torch

    header = {
        "command": shlex.join(["python", "scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "model": args.model, "data": args.data,
        "test_episodes": args.test_episodes,
        "one_cell": shlex.join(["metarun", *cell_overrides(cells[-1], args)]),
    }  # fmt: skip
    rows = aggregate(results)
    saved = [as_json(row) for row in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps({"header": header, "rows": saved}, indent=1))
    body = markdown(rows, header) + (f"\nNot run yet: {', '.join(missing)}.\n" if missing else "")
    (args.out / "benchmark.md").write_text(body)
    if args.doc:  # one section per model: `benchmark` (small), `benchmark-minilm`, ...
        rewrite_section(args.doc, "benchmark" if args.model == "small" else f"benchmark-{args.model}", body)
    console.print(body)
    return saved


if __name__ == "__main__":
    main()

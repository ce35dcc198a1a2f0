"""Run a matrix of metarun runs and write one results table (Markdown and JSON).

One row per (task family, shots, algorithm) in metarun.report's table (what `metarun-report` writes): mean test
accuracy with its 95% CI (over the test episodes with one seed, a Student-t interval of the per-seed means with
several), best validation score (`eval.select_by`) and meta-training wall time. Finished cells (a metrics.json in
their run folder) are read, not rerun, and a stopped cell continues from its last checkpoint (train.resume), so a
half-finished matrix resumes where it stopped.

    python scripts/benchmark.py                       # the default matrix on CLINC150
    python scripts/benchmark.py --quick               # a smoke check in minutes
    python scripts/benchmark.py --doc docs/results.md    # also rewrite that document's results section
    python scripts/benchmark.py --model minilm --algos prototypes,protonet,maml,fomaml,reptile,finetune,scratch

An experiment with fixed evaluation tasks (ARSC's protocol) gets a table of accuracy, balanced accuracy and macro-F1
over its tasks, and can score the practitioner's baselines (metarun.baselines) on the same tasks beside the runs;
`--variant LABEL="OVERRIDES"` adds a row of its own settings:

    python scripts/benchmark.py --experiment arsc_dev --algos protonet --baselines majority,tfidf_lr,features_lr \
        --variant maml-top2="algo=maml algo.outer_scope=top algo.top_layers=2"
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docsection import rewrite_section  # scripts/docsection.py, beside this script
from metarun.report import Row, Run, duration, group_runs, load_run, table

METARUN = str(Path(sys.executable).with_name("metarun"))
EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"
FAMILY_PRESETS = {"clinc150": {"fewshot_cls": "clinc150_intents", "domain_adapt": "clinc150_domains"}}
console = Console()


@dataclass(frozen=True)
class Cell:
    family: str
    shots: int
    algo: str  # an algorithm's name, or a variant's label
    seed: int
    settings: tuple[str, ...] = ()  # a variant's overrides (`algo=<algo>` when empty)

    @property
    def name(self) -> str:
        shots = f"_{self.shots}shot" if self.shots else ""  # an experiment's cells take its own shots
        return f"{self.family}{shots}_{self.algo}_seed{self.seed}"


def cell_preset(cell: Cell, data: str, experiment: str | None = None) -> str | None:
    """The cell's `experiment=` preset: the one asked for, else `<family preset>_<k>shot` where one exists, else the
    family's own."""
    if experiment:
        return experiment
    family = FAMILY_PRESETS.get(data, {}).get(cell.family)
    per_shot = f"{family}_{cell.shots}shot"
    return per_shot if family and (EXPERIMENTS / f"{per_shot}.yaml").is_file() else family


def cell_overrides(cell: Cell, args: argparse.Namespace) -> list[str]:
    preset = cell_preset(cell, args.data, args.experiment)
    base = [f"experiment={preset}"] if preset else [f"task={cell.family}", f"data={args.data}"]
    budget = [f"train.outer_steps={args.outer_steps}"] if args.outer_steps else []
    algo = list(cell.settings) or [f"algo={cell.algo}"]
    shots = [] if args.experiment else [f"model={args.model}", f"task.k_shot={cell.shots}"]  # the preset's own
    return [*base, *algo, *shots, f"seed={cell.seed}", f"eval.test_episodes={args.test_episodes}", *budget,
            *args.override]  # fmt: skip


def run_cell(cell: Cell, args: argparse.Namespace, folder: Path) -> Run:
    """The cell's run, from its finished run folder or from a new metarun run."""
    if not (folder / "metrics.json").is_file():
        stopped = (folder / "checkpoints" / "last.pt").is_file()
        where = f"train.resume={folder}" if stopped else f"hydra.run.dir={folder}"
        command = [METARUN, *cell_overrides(cell, args), where]
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "benchmark.log", "a") as log:
            returncode = run_to_the_end(command, log)
        if returncode != 0:
            raise SystemExit(f"cell {cell.name} failed (exit {returncode}); see {folder / 'benchmark.log'}")
    return load_run(folder)


def run_to_the_end(command: list[str], log) -> int:
    """Run `command` and return its exit status. A SIGTERM to this script reaches the command too, so that a stopped
    benchmark leaves no run writing into its cell (Ctrl-C reaches both through the terminal already)."""
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    previous = signal.signal(signal.SIGTERM, lambda signum, _: child.send_signal(signum))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def variant(text: str) -> tuple[str, tuple[str, ...]]:
    label, _, overrides = text.partition("=")
    if not label or not overrides:
        raise argparse.ArgumentTypeError(f'--variant {text!r}: give LABEL="OVERRIDES", e.g. top2="algo=maml ..."')
    return label, tuple(shlex.split(overrides))


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
    parser.add_argument("--experiment", help="every cell runs this preset, e.g. arsc_dev (its fixed tasks)")
    parser.add_argument("--variant", action="append", default=[], type=variant, metavar='LABEL="OVERRIDES"',
                        help="with --experiment: a row of its own, run with these overrides")  # fmt: skip
    parser.add_argument("--baselines", type=split, default=[], help="with --experiment: majority,tfidf_lr,features_lr")
    parser.add_argument(
        "override", nargs="*", help="extra metarun overrides for every cell, e.g. train.outer_steps=500"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.test_episodes, args.outer_steps = "tiny", min(args.test_episodes, 100), args.outer_steps or 40
        args.override = ["eval.val_interval=20", "eval.val_episodes=20", *args.override]
    default_out = f"benchmark-{args.experiment}" if args.experiment else (
        "benchmark" if args.model == "small" else f"benchmark-{args.model}")  # fmt: skip
    args.out = args.out or Path("outputs") / default_out
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.experiment:
        variants = [(algo, ()) for algo in args.algos] + args.variant
        cells = [Cell(args.experiment, 0, label, seed, settings) for (label, settings), seed in
                 itertools.product(variants, args.seeds)]  # fmt: skip
    else:
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

    command = shlex.join(["python", "scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    if args.experiment:
        return fixed_task_benchmark(args, results, missing, command)
    header = {
        "command": command,
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
    console.print(body, markup=False)
    return saved


def fixed_task_row(method: str, scores: dict, meta_train_seconds=None, step_seconds=None) -> dict:
    """One row of an experiment's table: each metric's mean over the fixed tasks with its 95% interval."""
    return {"method": method, **scores, "meta_train_seconds": meta_train_seconds, "outer_step_seconds": step_seconds}


def fixed_task_scores(m: dict) -> dict:
    """A row's numbers from test metrics as metrics.json holds them (a run's, or a baseline's)."""
    return {"tasks": m["test_episodes"], "acc": m["test_acc"], "acc_ci95": m["test_ci95"],
            "balanced_acc": m["test_balanced_acc"], "balanced_acc_ci95": m["test_balanced_acc_ci95"],
            "macro_f1": m["test_macro_f1"], "macro_f1_ci95": m["test_macro_f1_ci95"]}  # fmt: skip


def baseline_scores(args: argparse.Namespace) -> dict[str, dict]:
    """Each asked baseline's test metrics on the experiment's tasks (as a run's metrics.json names them); kept in
    baselines.json and read from there again."""
    from metarun.baselines import score_baselines
    from metarun.config import compose

    saved = args.out / "baselines.json"
    found = json.loads(saved.read_text()) if saved.is_file() else {}
    todo = tuple(m for m in args.baselines if m not in found)
    if todo:
        cfg = compose("config", [f"experiment={args.experiment}", *args.override])
        found.update({method: test.metrics() for method, test in score_baselines(cfg, todo).items()})
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(found, indent=1))
    return {m: found[m] for m in args.baselines}


def fixed_task_table(rows: list[dict]) -> str:
    def cell(row: dict, key: str) -> str:
        ci = row[f"{key}_ci95"]
        return f"{100 * row[key]:.1f}" + ("" if ci is None else f" ± {100 * ci:.1f}")

    lines = ["| method | accuracy % | balanced accuracy % | macro-F1 % | tasks | meta-training | outer step (median) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in rows:
        step = "-" if row["outer_step_seconds"] is None else f"{row['outer_step_seconds']:.2f} s"
        lines.append(
            f"| {row['method']} | {cell(row, 'acc')} | {cell(row, 'balanced_acc')} | "
            f"{cell(row, 'macro_f1')} | {row['tasks']} | {duration(row['meta_train_seconds'])} | {step} |"
        )
    return "\n".join(lines) + "\n"


def fixed_task_benchmark(args: argparse.Namespace, results: list[tuple[Cell, Run]], missing: list[str], command: str):
    """An experiment's table: its runs, then the baselines, each a mean over its fixed tasks with a Student-t 95%
    interval over those tasks."""
    import torch

    seeds = len(args.seeds) > 1
    rows = [fixed_task_row(cell.algo + (f" (seed {cell.seed})" if seeds else ""), fixed_task_scores(run.metrics),
                           run.meta_train_seconds, run.timing["outer_step_median_seconds"])
            for cell, run in results]  # fmt: skip
    rows += [fixed_task_row(f"baseline: {m}", fixed_task_scores(s)) for m, s in baseline_scores(args).items()]
    settings = [f"- {cell.algo}: `{' '.join(cell.settings) or 'algo=' + cell.algo}`" for cell, _ in results]
    body = "\n".join([
        f"Command: `{command}`  ",
        f"Ran on: {platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; `experiment={args.experiment}`. Means over the fixed tasks with Student-t 95% "
        "intervals over tasks.",
        "", *settings, "", fixed_task_table(rows),
    ]) + (f"\nNot run yet: {', '.join(missing)}.\n" if missing else "")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (args.out / "benchmark.md").write_text(body)
    if args.doc:
        rewrite_section(args.doc, f"benchmark-{args.experiment}", body)
    console.print(body, markup=False)
    return rows


if __name__ == "__main__":
    main()

"""CUDA against the CPU: every algorithm's meta-gradient and adapted predictions agree across devices, and a run
meta-trained on the GPU is scored, predicted with, and loaded back on the CPU.

    python scripts/cuda_check.py --out outputs/cuda-check      # on a machine with CUDA; non-zero exit on a mismatch
    python scripts/cuda_check.py --device cpu --algos maml     # CPU against CPU: what the test suite runs

Gradients: for each conf/algo entry, the algorithm is built as `metarun` builds it (model=tiny, synthetic data,
one seed) on the CPU and on --device, and given the same meta-batch of episodes with dropout off. The meta-gradient
(the loop's own accumulation; on CUDA `algo.batch_tasks=auto` batches the tasks under vmap where it can, so the
sequential path is checked there too) and the adapted query logits must agree with the CPU's to --tolerance,
relative (the largest absolute difference over the largest absolute CPU value).

Runs (--runs): `metarun` meta-trains each algorithm on --device at the smoke budget in one multirun,
`metarun-eval` and `metarun-predict` use one of those runs, and the run's checkpoint is loaded on the CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import torch

from metarun.config import compose
from metarun.evaluation import eval_mode
from metarun.loop import accumulate_meta_gradient
from metarun.parts import build_algorithm, load_task

CONF_ALGOS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "algo").glob("*.yaml"))
SETUP = ["budget=smoke", "data=synthetic", "data.examples_per_class=12", "model=tiny", "train.meta_batch_size=4"]


def outcome(algo: str, device: torch.device, extra: list[str]) -> dict:
    """One meta-batch on `device`: the meta-gradient of every trained tensor, the adapted query logits of the first
    episode, and whether the tasks were batched."""
    cfg = compose("config", [*SETUP, f"algo={algo}", f"device={device.type}", *extra])
    torch.manual_seed(cfg.seed)
    family, tokenizer = load_task(cfg)
    algorithm = build_algorithm(cfg, tokenizer, device, n_train_classes=family.n_train_classes)
    rng = random.Random(cfg.seed)
    episodes = [family.train_sampler().sample(rng).to(device) for _ in range(cfg.train.meta_batch_size)]
    params = dict(algorithm.model.named_parameters())
    with eval_mode(algorithm.model):  # dropout draws differ between devices
        accumulate_meta_gradient(algorithm, params, episodes, outer_step=1)
        adapted = algorithm.adapt(params, episodes[0].support_x, episodes[0].support_y, episodes[0].query_x)
        logits = algorithm.logits(adapted, episodes[0].query_x).detach()
    trained = {**params, **algorithm.extra_parameters()}
    grads = {n: p.grad.detach().cpu() for n, p in trained.items() if p.grad is not None}
    return {"grads": grads, "logits": logits.cpu(), "batched": algorithm.batched}


def relative_difference(candidate: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    if candidate.keys() != reference.keys():
        raise SystemExit(f"different tensors: {sorted(candidate.keys() ^ reference.keys())}")
    worst = max(((candidate[n].double() - reference[n].double()).abs().max().item() for n in reference), default=0)
    scale = max((reference[n].abs().max().item() for n in reference), default=0)
    return worst / scale if scale else worst


def check_gradients(algos: list[str], device: torch.device, tolerance: float) -> tuple[list[str], list[str]]:
    """One line per (algorithm, path) compared, and the disagreements beyond `tolerance`."""
    lines, failed = [], []
    for algo in algos:
        cpu = outcome(algo, torch.device("cpu"), [])
        others = [outcome(algo, device, [])]
        if others[0]["batched"]:  # the sequential path on the device as well
            others.append(outcome(algo, device, ["algo.batch_tasks=false"]))
        for other in others:
            grads = relative_difference(other["grads"], cpu["grads"])
            logits = relative_difference({"logits": other["logits"]}, {"logits": cpu["logits"]})
            how = "tasks batched (vmap)" if other["batched"] else "tasks one by one"
            line = (f"{algo:10s} {device.type} {how:20s}: {len(cpu['grads'])} gradients, relative difference "
                    f"{grads:.1e}; adapted logits {logits:.1e}")  # fmt: skip
            print(line, flush=True)
            lines.append(line)
            if not (grads <= tolerance and logits <= tolerance):
                failed.append(f"{algo} on {device.type} ({how}) differs from the CPU beyond --tolerance {tolerance:g}")
    return lines, failed


def command(*args: str) -> str:
    """An installed command (beside this Python), its output returned; SystemExit with its output if it fails."""
    done = subprocess.run([str(Path(sys.executable).with_name(args[0])), *args[1:]], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def check_runs(algos: list[str], device: torch.device, out: Path, tolerance: float) -> list[str]:
    """Meta-train every algorithm on `device` in one multirun; score the MAML run again there, and predict with it
    there and on the CPU."""
    sweep = out / "sweep"
    command("metarun", "-m", *SETUP[:-1], f"algo={','.join(algos)}", f"device={device.type}",
            f"hydra.sweep.dir={sweep}")  # fmt: skip
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    lines = []
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        lines.append(f"metarun algo={metrics['algo']} on {metrics['device']}: test accuracy {metrics['test_acc']:.3f}")
    if len(runs) != len(algos):
        raise SystemExit(f"{len(runs)} of {len(algos)} runs wrote metrics.json in {sweep}")
    run = next(r for r in runs if json.loads((r / "metrics.json").read_text())["algo"] == "maml")
    command("metarun-eval", f"run={run}", f"device={device.type}", f"hydra.run.dir={out / 'eval'}")
    rescored, trained = (json.loads((f / "metrics.json").read_text())["test_acc"] for f in (out / "eval", run))
    lines.append(f"metarun-eval on {device.type}: test accuracy {rescored:.3f} (the run's own: {trained:.3f})")
    if rescored != trained:
        raise SystemExit(f"metarun-eval scored {run} at {rescored}, the run itself at {trained}")
    support, inputs = out / "support.jsonl", out / "inputs.jsonl"
    support.write_text("".join(json.dumps({"text": t, "label": t.split()[0]}) + "\n"
                               for t in ("good day", "good one", "bad day", "bad one")))  # fmt: skip
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("good", "bad", "a day", "one")))
    probabilities = {}
    for where in dict.fromkeys([device.type, "cpu"]):  # the GPU's run, adapted and predicting on each device
        predictions = out / f"predictions-{where}.jsonl"
        command("metarun-predict", f"run={run}", f"support={support}", f"inputs={inputs}", f"out={predictions}",
                f"device={where}")  # fmt: skip
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        probabilities[where] = {"p": torch.tensor([[r["probabilities"][k] for k in sorted(r["probabilities"])]
                                                   for r in rows])}  # fmt: skip
    gap = relative_difference(probabilities[device.type], probabilities["cpu"])
    lines.append(f"metarun-predict with the {device.type}-trained run: {device.type} against cpu probabilities, "
                 f"relative difference {gap:.1e}")  # fmt: skip
    if gap > tolerance:
        raise SystemExit(f"metarun-predict's probabilities on {device.type} and cpu differ beyond {tolerance:g}")
    print("\n".join(lines), flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--algos", type=lambda t: t.split(","), default=CONF_ALGOS)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--runs", action="store_true", help="also meta-train, evaluate, predict and load (commands)")
    parser.add_argument("--out", type=Path, default=Path("outputs/cuda-check"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    lines = [f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")]
    compared, failures = check_gradients(args.algos, device, args.tolerance)
    lines += compared
    if args.runs:  # also when a gradient disagrees: every finding is written before the exit
        try:
            lines += check_runs(args.algos, device, args.out, args.tolerance)
        except SystemExit as stop:
            failures.append(str(stop))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check.txt").write_text("\n".join([*lines, *failures]) + "\n")
    if failures:
        raise SystemExit("\n".join(failures))


if __name__ == "__main__":
    main()

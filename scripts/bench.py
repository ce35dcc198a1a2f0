"""Speed and memory of one meta-training outer step: metarun against `higher` and a naive unrolled reference.

    python scripts/bench.py                          # the reference workload: maml, fomaml, reptile
    python scripts/bench.py --models small,base --inner-steps 1,5,10,20
    python scripts/bench.py --memory                 # second order, store vs recompute, model=base, 1..20 steps
    python scripts/bench.py --lora --meta-batch 1    # second order on MiniLM at 128 tokens: whole encoder vs LoRA
    python scripts/bench.py --loop                   # a real `metarun` run's outer step vs the pure meta-step
    python scripts/bench.py --busy 1                 # default threads vs device.threads=1..N, idle and 1 CPU busy
    python scripts/bench.py --device cuda --batched  # on a GPU, with tasks batched under vmap as well
    python scripts/bench.py --doc docs/performance.md    # also rewrite that document's bench sections

Before anything is timed, every implementation's meta-gradient is compared with the naive reference on the
same weights and tasks (the reference model, up to 5 inner steps: the same code paths as every timed
setting, at a cost the check can afford); a difference above --tolerance stops the benchmark. Each
(implementation, setting) is then timed in its own subprocess (so its peak memory is its own): warm-up
steps, then --steps timed outer steps, in --rounds rounds interleaved across implementations. On CUDA the
clock waits for the GPU at the end of each step, and memory is the allocator's peak beyond the start.
Needs the `bench` extra for `higher`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from docsection import rewrite_section  # scripts/docsection.py, beside this script
from bench_timing import (
    lora_table,
    loop_overhead,
    rank_scaling,
    thread_choice,
    worker,
)  # scripts/bench_timing.py, beside this script
from bench_workloads import (
    ALGOS,
    PEERS,
    Setting,
    lora_settings,
    meta_gradient,
)  # scripts/bench_workloads.py, beside this script


class GradientMismatch(SystemExit):
    pass


def check_gradient(name: str, candidate: dict, reference: dict, tolerance: float) -> float:
    """Max abs difference between two meta-gradients; refuses (GradientMismatch) above `tolerance`."""
    worst = max((candidate[n] - reference[n]).abs().max().item() for n in reference)
    if not worst <= tolerance:
        raise GradientMismatch(
            f"{name}: its meta-gradient differs from the naive reference by {worst:.3g} (max abs), above "
            f"--tolerance {tolerance:g}; timings of different maths are not comparable, so nothing was timed."
        )
    return worst


def check_all(settings: list[Setting], tolerance: float) -> None:
    """Every timed implementation against the naive reference, on the reference model (cheap, same maths)."""
    checked = {replace(s, model="reference", inner_steps=min(s.inner_steps, 5)) for s in settings}
    for s in sorted(checked, key=str):
        if s.impl in ("naive", "forward-backward"):
            continue
        worst = check_gradient(str(s), meta_gradient(s), meta_gradient(replace(s, impl="naive")), tolerance)
        print(f"gradient check {s.impl} {s.algo}: max abs difference {worst:.2e}", flush=True)


# --- timing, one subprocess per (implementation, setting): this script again, as --worker ---


def time_in_subprocess(s: Setting, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(asdict(s)), "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip
    # a fixed mmap threshold: freed blocks go back to the OS, so resident memory tracks live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker {s} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(settings: list[Setting], args: argparse.Namespace) -> dict[Setting, dict]:
    """Rounds interleaved across settings; per setting the median step time over all rounds and the max peak."""
    samples: dict[Setting, dict] = {s: {"times": [], "peak_extra_bytes": 0, "peak_bytes": 0} for s in settings}
    for round_ in range(args.rounds):
        for s in settings:
            print(f"round {round_ + 1}/{args.rounds}: {s.impl} {s.algo} {s.model} k={s.inner_steps}", flush=True)
            result = time_in_subprocess(s, args)
            samples[s]["times"] += result["times"]
            for key in ("peak_extra_bytes", "peak_bytes"):
                samples[s][key] = max(samples[s][key], result[key])
    return {s: {"median_s": statistics.median(v["times"]), "peak_extra_mib": v["peak_extra_bytes"] / 2**20,
                "peak_mib": v["peak_bytes"] / 2**20} for s, v in samples.items()}  # fmt: skip


def speed_table(results: dict[Setting, dict], unit: dict[str, float]) -> list[dict]:
    rows = []
    for s, r in results.items():
        if s.impl == "forward-backward":
            continue
        peers = [v["median_s"] for p, v in results.items() if p.impl in PEERS and replace(p, impl=s.impl) == s]
        rows.append({
            **asdict(s), **r, "vs_fastest_peer": r["median_s"] / min(peers) if peers else None,
            "multiple_of_forward_backward": r["median_s"] / unit[s.model],
        })  # fmt: skip
    return rows


def markdown(rows: list[dict], header: str, memory: str = "peak extra RSS") -> str:
    columns = ("algo", "model", "inner steps", "implementation", "time per outer step", "vs fastest peer",
               "x plain fwd+bwd", memory)  # fmt: skip
    lines = [header, "", f"| {' | '.join(columns)} |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['vs_fastest_peer']:.2f}" if r["vs_fastest_peer"] else "-"
        lines.append(
            f"| {r['algo']} | {r['model']} | {r['inner_steps']} | {r['impl']} | {1000 * r['median_s']:.0f} ms | "
            f"{ratio} | {r['multiple_of_forward_backward']:.1f} | {r['peak_extra_mib']:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    split = lambda text: [s for s in text.split(",") if s]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", type=split, default=list(ALGOS))
    parser.add_argument("--models", type=split, default=["reference"])
    parser.add_argument("--inner-steps", type=lambda t: [int(x) for x in split(t)], default=[5])
    parser.add_argument("--meta-batch", type=int, default=4, help="tasks per outer step (peak memory is per task)")
    parser.add_argument("--memory", action="store_true", help="second order: store vs recompute vs peers")
    parser.add_argument("--lora", action="store_true", help="second order on MiniLM: whole encoder vs LoRA scopes")
    parser.add_argument("--loop", action="store_true", help="full metarun loop vs the pure meta-step")
    parser.add_argument("--ranks", type=int, help="N torchrun processes x 1 thread vs 1 process x N threads")
    parser.add_argument("--busy", type=int, help="default threads vs each device.threads, idle and with N spinners")
    loop_run = ["data=synthetic", "model=small", "algo=maml", "task.k_shot=5", "eval.val_episodes=5",
                "eval.test_episodes=5", "eval.val_interval=100000"]  # fmt: skip
    parser.add_argument("--loop-overrides", type=split, default=loop_run)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where models, tasks and timings are")
    parser.add_argument("--batched", action="store_true", help="also time metarun with the tasks batched (vmap)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--doc", type=Path, help="rewrite this document's bench sections (docs/performance.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.ranks or args.busy) and args.device != "cpu":
        parser.error("--ranks and --busy time CPU threads; they take no --device")
    if args.memory:
        args.algos, args.models = ["maml"], args.models if args.models != ["reference"] else ["base"]
        args.inner_steps = args.inner_steps if args.inner_steps != [5] else [1, 5, 10, 20]
    if args.lora:
        args.inner_steps = args.inner_steps if args.inner_steps != [5] else [2]
    return args


def gpu_name(device: str) -> str:
    return f", {torch.cuda.get_device_name()}" if device == "cuda" else ""


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(Setting(**json.loads(args.worker)), args.warmup, args.steps)))
        return ""
    header = (
        f"Command: `{shlex.join(['python', 'scripts/bench.py', *(argv if argv is not None else sys.argv[1:])])}`  \n"
        f"Ran on: {platform.machine()}, {args.threads} CPU threads{gpu_name(args.device)}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; meta-batch {args.meta_batch}; {args.rounds} rounds x {args.steps} timed steps "
        f"after {args.warmup} warm-up."
    )
    if args.loop:
        body = f"{header}\n\n{loop_overhead(args)}"
    elif args.ranks:
        body = f"{header}\n\n{rank_scaling(args)}"
    elif args.busy:
        body = f"{header}\n\n{thread_choice(args)}"
    elif args.lora:  # its maths is checked by tests/test_lora.py (finite differences), not against a peer
        settings = lora_settings(args.inner_steps, args.meta_batch, args.device)
        body = lora_table(measure(settings, args), header, "GPU memory" if args.device == "cuda" else "RSS")
    else:
        impls = ["metarun", "metarun-recompute"] if args.memory else ["metarun"]
        impls += ["metarun-batched"] if args.batched else []
        settings = [
            Setting(impl, algo, model, k, meta_batch=args.meta_batch, device=args.device)
            for model in args.models
            for k in args.inner_steps
            for algo in args.algos
            for impl in (*impls, *PEERS)
        ]
        check_all(settings, args.tolerance)
        units = [Setting("forward-backward", "none", model, meta_batch=args.meta_batch, device=args.device)
                 for model in args.models]  # fmt: skip
        results = measure([*units, *settings], args)
        unit = {s.model: results[s]["median_s"] for s in units}
        memory = "peak extra GPU memory" if args.device == "cuda" else "peak extra RSS"
        body = markdown(speed_table(results, unit), header, memory)
    args.out.mkdir(parents=True, exist_ok=True)
    modes = {"loop": args.loop, "ranks": args.ranks, "threads": args.busy, "lora": args.lora, "memory": args.memory}
    name = next((mode for mode, asked in modes.items() if asked), "speed")
    name += "-cuda" if args.device == "cuda" else ""
    (args.out / f"{name}.md").write_text(body)
    if args.doc:
        rewrite_section(args.doc, f"bench-{name}", body)
    print(body)
    return body


if __name__ == "__main__":
    main()

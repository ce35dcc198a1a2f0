"""Speed and memory of one meta-training outer step: metarun against `higher` and a naive unrolled reference.

    python scripts/bench.py                          # the reference workload: maml, fomaml, reptile
    python scripts/bench.py --models small,base --inner-steps 1,5,10,20
    python scripts/bench.py --memory                 # second order, store vs recompute, model=base, 1..20 steps
    python scripts/bench.py --loop                   # a real `metarun` run's outer step vs the pure meta-step
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
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from docsection import rewrite_section  # scripts/docsection.py, beside this script
from metarun.algorithms import MAML, Reptile
from metarun.episodes import Episode
from metarun.loop import accumulate_meta_gradient
from metarun.model import TransformerClassifier
from metarun.torch_workarounds import twice_differentiable_attention

ALGOS = ("maml", "fomaml", "reptile")
PEERS = ("higher", "naive")
MODELS = {  # the reference workload, and conf/model's small and base at the same vocabulary
    "reference": dict(d_model=128, n_layers=2, n_heads=4, d_ff=256, max_len=32),
    "small": dict(d_model=128, n_layers=4, n_heads=4, d_ff=256, max_len=32),
    "base": dict(d_model=256, n_layers=6, n_heads=8, d_ff=1024, max_len=32),
}


@dataclass(frozen=True)
class Setting:
    impl: str  # metarun | metarun-recompute | metarun-batched | higher | naive | forward-backward
    algo: str
    model: str = "reference"
    inner_steps: int = 5
    vocab: int = 8000
    n_way: int = 5
    k_shot: int = 5
    n_query: int = 15
    meta_batch: int = 4
    inner_lr: float = 0.1
    outer_lr: float = 1e-3
    device: str = "cpu"


def make_model(s: Setting, dtype=torch.float32) -> TransformerClassifier:
    torch.manual_seed(0)
    return TransformerClassifier(s.vocab, s.n_way, dropout=0.0, **MODELS[s.model]).to(s.device, dtype)


def make_episodes(s: Setting, seed: int = 0) -> list[Episode]:
    """Random token ids, lengths 8..max_len with the rest padded; labels 0..N-1."""
    g = torch.Generator().manual_seed(seed)
    max_len = MODELS[s.model]["max_len"]

    def tokens(rows: int) -> torch.Tensor:
        x = torch.randint(1, s.vocab, (rows, max_len), generator=g)
        lengths = torch.randint(8, max_len + 1, (rows,), generator=g)
        x[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0
        return x

    labels = torch.arange(s.n_way)
    return [
        Episode(
            tokens(s.n_way * s.k_shot),
            labels.repeat_interleave(s.k_shot),
            tokens(s.n_way * s.n_query),
            labels.repeat_interleave(s.n_query),
            labels,
        ).to(torch.device(s.device))  # fmt: skip
        for _ in range(s.meta_batch)
    ]


# --- implementations: each sets .grad on the model's parameters to the meta-batch's mean meta-gradient ---


def metarun_gradient(s: Setting):
    """What `metarun` runs: the algorithm's meta-gradient through the loop's own accumulation (metarun-batched:
    the meta-batch's tasks at once under vmap, as `algo.batch_tasks=auto` does on CUDA)."""
    batched = s.impl == "metarun-batched"
    settings = dict(inner_steps=s.inner_steps, inner_lr=s.inner_lr, head_init="learned", batch_tasks=batched)
    memory = "recompute" if s.impl == "metarun-recompute" else "store"

    def step(model, episodes):
        if s.algo == "reptile":
            algorithm = Reptile(model, **settings)
        else:
            algorithm = MAML(model, first_order=s.algo == "fomaml", memory=memory, **settings)
        accumulate_meta_gradient(algorithm, dict(model.named_parameters()), episodes)

    return step


def naive_gradient(s: Setting):
    """The textbook unroll: autograd.grad per inner step (create_graph for second order), one task at a time."""

    def step(model, episodes):
        params = dict(model.named_parameters())
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for e in episodes:
            fast = {n: p if s.algo == "maml" else p.detach().requires_grad_() for n, p in params.items()}
            for _ in range(s.inner_steps):
                loss = F.cross_entropy(functional_call(model, fast, (e.support_x,)), e.support_y)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=s.algo == "maml")
                fast = {n: p - s.inner_lr * g for (n, p), g in zip(fast.items(), grads)}
                if s.algo != "maml":
                    fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
            if s.algo == "reptile":
                task = {n: params[n].detach() - fast[n] for n in params}
            else:
                query = F.cross_entropy(functional_call(model, fast, (e.query_x,)), e.query_y)
                wrt = params if s.algo == "maml" else fast
                task = dict(zip(params, torch.autograd.grad(query, [wrt[n] for n in params])))
            for n in total:
                total[n] += task[n]
        for n, p in params.items():
            p.grad = total[n] / len(episodes)

    return step


def higher_gradient(s: Setting):
    import higher

    def step(model, episodes):
        params = list(model.parameters())
        total = [torch.zeros_like(p) for p in params]
        inner_opt = torch.optim.SGD(params, lr=s.inner_lr)
        for e in episodes:
            with higher.innerloop_ctx(
                model, inner_opt, copy_initial_weights=False, track_higher_grads=s.algo == "maml"
            ) as (fmodel, diffopt):
                for _ in range(s.inner_steps):
                    diffopt.step(F.cross_entropy(fmodel(e.support_x), e.support_y))
                if s.algo == "reptile":
                    task = [p.detach() - f.detach() for p, f in zip(params, fmodel.parameters())]
                else:
                    query = F.cross_entropy(fmodel(e.query_x), e.query_y)
                    wrt = params if s.algo == "maml" else list(fmodel.parameters())
                    task = torch.autograd.grad(query, wrt)
            for t, g in zip(total, task):
                t += g
        for p, t in zip(params, total):
            p.grad = t / len(episodes)

    return step


IMPLEMENTATIONS = {
    "metarun": metarun_gradient,
    "metarun-recompute": metarun_gradient,
    "metarun-batched": metarun_gradient,
    "higher": higher_gradient,
    "naive": naive_gradient,
}


def meta_gradient(s: Setting, dtype=torch.float32) -> dict[str, torch.Tensor]:
    model, episodes = make_model(s, dtype), make_episodes(s)
    with twice_differentiable_attention() if s.algo == "maml" else contextlib.nullcontext():
        IMPLEMENTATIONS[s.impl](s)(model, episodes)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


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


# --- timing, one subprocess per (implementation, setting) ---


def memory_status(key: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def cuda_peak_tracker(device: torch.device):
    """On CUDA: a function that returns the allocator's peak bytes beyond the memory allocated when it was made;
    None elsewhere (resident memory is read instead)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    return lambda: torch.cuda.max_memory_allocated(device) - baseline


def worker(s: Setting, warmup: int, steps: int) -> dict:
    """Time `steps` outer steps (meta-gradient + Adam); the forward-backward impl times the unit of work."""
    torch.manual_seed(0)
    model, episodes = make_model(s), make_episodes(s)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.outer_lr)
    if s.impl == "forward-backward":  # one plain forward+backward over support+query sequences (100 by default)
        tokens = torch.cat([episodes[0].support_x, episodes[0].query_x])
        labels = torch.cat([episodes[0].support_y, episodes[0].query_y])

        def outer_step():
            F.cross_entropy(model(tokens), labels).backward()
            optimizer.zero_grad(set_to_none=True)
    else:
        meta_step = IMPLEMENTATIONS[s.impl](s)

        def outer_step():
            with twice_differentiable_attention() if s.algo == "maml" else contextlib.nullcontext():
                meta_step(model, episodes)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    # not "extra": thread pools (one plain forward+backward) and Adam's state (a step with zero gradients)
    F.cross_entropy(model(episodes[0].query_x), episodes[0].query_y).backward()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    device = torch.device(s.device)
    gpu_peak = cuda_peak_tracker(device)
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS count from here (Linux)
    baseline, times = memory_status("VmRSS"), []
    for i in range(warmup + steps):
        started = time.perf_counter()
        outer_step()
        if gpu_peak:
            torch.cuda.synchronize(device)  # kernels run asynchronously: the step ends when the GPU is done
        if i >= warmup:
            times.append(time.perf_counter() - started)
    peak = gpu_peak() if gpu_peak else memory_status("VmHWM") - baseline
    return {"times": times, "peak_extra_bytes": peak}


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
    samples: dict[Setting, dict] = {s: {"times": [], "peak_extra_bytes": 0} for s in settings}
    for round_ in range(args.rounds):
        for s in settings:
            print(f"round {round_ + 1}/{args.rounds}: {s.impl} {s.algo} {s.model} k={s.inner_steps}", flush=True)
            result = time_in_subprocess(s, args)
            samples[s]["times"] += result["times"]
            samples[s]["peak_extra_bytes"] = max(samples[s]["peak_extra_bytes"], result["peak_extra_bytes"])
    return {s: {"median_s": statistics.median(v["times"]), "peak_extra_mib": v["peak_extra_bytes"] / 2**20}
            for s, v in samples.items()}  # fmt: skip


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


def check_all(settings: list[Setting], tolerance: float) -> None:
    """Every timed implementation against the naive reference, on the reference model (cheap, same maths)."""
    checked = {replace(s, model="reference", inner_steps=min(s.inner_steps, 5)) for s in settings}
    for s in sorted(checked, key=str):
        if s.impl in ("naive", "forward-backward"):
            continue
        worst = check_gradient(str(s), meta_gradient(s), meta_gradient(replace(s, impl="naive")), tolerance)
        print(f"gradient check {s.impl} {s.algo}: max abs difference {worst:.2e}", flush=True)


def loop_overhead(args: argparse.Namespace) -> str:
    """A real metarun run's median outer step (sampling, logging, progress) against the pure meta-step."""
    import random
    import tempfile

    from metarun.config import compose
    from metarun.run import build_algorithm, prepare_episodes, resolve_device, run

    steps = args.steps + args.warmup  # both sides: the median over the same steps, warm-up included
    overrides = [*args.loop_overrides, f"device={args.device}", f"train.outer_steps={steps}"]
    cfg = compose("config", overrides)
    out = Path(tempfile.mkdtemp())

    def pure_meta_step() -> float:
        """The same model, algorithm and episodes as the run (same seeds), without the loop around them."""
        device = resolve_device(cfg.device.name)
        torch.manual_seed(cfg.seed)
        tokenizer, samplers, _ = prepare_episodes(cfg)
        algorithm = build_algorithm(cfg, tokenizer, samplers["train"].n_classes, device)
        params = dict(algorithm.model.named_parameters())
        trained = list(algorithm.trained_tensors().values())
        optimizer = algorithm.outer_optimizer(algorithm.outer_parameter_groups())
        rng, times = random.Random(cfg.seed), []
        algorithm.model.train()
        for _ in range(steps):
            episodes = [samplers["train"].sample(rng).to(device) for _ in range(cfg.train.meta_batch_size)]
            started = time.perf_counter()
            accumulate_meta_gradient(algorithm, params, episodes)
            torch.nn.utils.clip_grad_norm_(trained, cfg.train.grad_clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    before = pure_meta_step()
    run(cfg, out / "run")
    loop_step = json.loads((out / "run" / "timing.json").read_text())["outer_step_median_seconds"]
    pure = min(before, pure_meta_step())  # measured before and after the run; the faster one is the yardstick
    return (
        f"Loop overhead (`{shlex.join(['metarun', *overrides])}`): median outer step {1000 * loop_step:.0f} ms "
        f"in the full loop vs {1000 * pure:.0f} ms for the pure meta-step: {loop_step / pure:.3f}x.\n"
    )


def rank_scaling(args: argparse.Namespace) -> str:
    """One real metarun run as `--ranks` processes of one thread (torchrun, gloo) against one process of that many
    threads, at the same global meta-batch; rounds alternate the two, and each side's median outer step counts."""
    steps = args.steps + args.warmup
    overrides = [*args.loop_overrides, f"train.meta_batch_size={args.meta_batch}", f"train.outer_steps={steps}"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    sides = {
        f"1 process x {args.ranks} threads": ([str(Path(sys.executable).with_name("metarun"))], args.ranks),
        f"{args.ranks} processes x 1 thread": ([torchrun, "--standalone", f"--nproc_per_node={args.ranks}", "-m",
                                                  "metarun"], 1),
    }  # fmt: skip
    steps_s: dict[str, list[float]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side, (command, threads) in sides.items():
            print(f"round {round_ + 1}/{args.rounds}: {side}", flush=True)
            folder = args.out / "ranks" / f"{len(steps_s[side])}-{threads}"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            done = subprocess.run([*command, *overrides, f"hydra.run.dir={folder}"], capture_output=True, text=True,
                                  env=env)  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
            steps_s[side].append(json.loads((folder / "timing.json").read_text())["outer_step_median_seconds"])
    (one, one_s), (many, many_s) = ((side, statistics.median(v)) for side, v in steps_s.items())
    return (
        f"Data-parallel meta-training (`{shlex.join(['metarun', *overrides])}`), median outer step: {one} "
        f"{1000 * one_s:.0f} ms, {many} {1000 * many_s:.0f} ms; the processes take {many_s / one_s:.2f}x the time "
        f"of the threads.\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    split = lambda text: [s for s in text.split(",") if s]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", type=split, default=list(ALGOS))
    parser.add_argument("--models", type=split, default=["reference"])
    parser.add_argument("--inner-steps", type=lambda t: [int(x) for x in split(t)], default=[5])
    parser.add_argument("--meta-batch", type=int, default=4, help="tasks per outer step (peak memory is per task)")
    parser.add_argument("--memory", action="store_true", help="second order: store vs recompute vs peers")
    parser.add_argument("--loop", action="store_true", help="full metarun loop vs the pure meta-step")
    parser.add_argument("--ranks", type=int, help="N torchrun processes x 1 thread vs 1 process x N threads")
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
    if args.ranks and args.device != "cpu":
        parser.error("--ranks compares CPU processes with CPU threads; it takes no --device")
    if args.memory:
        args.algos, args.models = ["maml"], args.models if args.models != ["reference"] else ["base"]
        args.inner_steps = args.inner_steps if args.inner_steps != [5] else [1, 5, 10, 20]
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
    name = "loop" if args.loop else "ranks" if args.ranks else "memory" if args.memory else "speed"
    name += "-cuda" if args.device == "cuda" else ""
    (args.out / f"{name}.md").write_text(body)
    if args.doc:
        rewrite_section(args.doc, f"bench-{name}", body)
    print(body)
    return body


if __name__ == "__main__":
    main()

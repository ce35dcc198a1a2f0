"""The benchmark's measurements: a worker's step times and peak memory, a run's loop overhead, ranks vs threads."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_workloads import IMPLEMENTATIONS, Setting, make_episodes, make_model, trained_names  # beside this script
from metarun.loop import accumulate_meta_gradient
from metarun.torch_workarounds import twice_differentiable_attention


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
    """Time `steps` outer steps (meta-gradient + Adam on the setting's scope); the forward-backward impl times the
    unit of work. Memory: the peak beyond the set-up model and optimizer state, and the process's whole peak."""
    torch.manual_seed(0)
    model, episodes = make_model(s), make_episodes(s)
    trained = set(trained_names(s, model))
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if n in trained], lr=s.outer_lr)
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
    for n, p in model.named_parameters():
        p.grad = torch.zeros_like(p) if n in trained else None
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
    whole = torch.cuda.max_memory_allocated(device) if gpu_peak else memory_status("VmHWM")
    return {"times": times, "peak_extra_bytes": peak, "peak_bytes": whole}


def lora_table(results: dict[Setting, dict], header: str, memory: str = "RSS") -> str:
    """--lora: each setting's time per outer step and peak memory, beyond the set-up model and optimizer state
    ("extra") and the process's whole peak, with each as a fraction of the whole encoder's at the same inner steps."""
    full = {s.inner_steps: r for s, r in results.items() if s.scope == "all"}
    lines = [header, "", f"| inner steps | both loops adapt | time per outer step | peak extra {memory} | of full "
             f"| peak {memory} | of full |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for s, r in results.items():
        base = full[s.inner_steps]
        layers = {None: "every layer", 1: "the top layer"}.get(s.lora_layers, f"the top {s.lora_layers} layers")
        what = "the whole encoder" if s.scope == "all" else f"LoRA rank {s.lora_rank} on {layers}, and the head"
        lines.append(
            f"| {s.inner_steps} | {what} | {1000 * r['median_s']:.0f} ms | {r['peak_extra_mib']:.0f} MiB | "
            f"{r['peak_extra_mib'] / base['peak_extra_mib']:.2f} | {r['peak_mib']:.0f} MiB | "
            f"{r['peak_mib'] / base['peak_mib']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def loop_overhead(args: argparse.Namespace) -> str:
    """A real metarun run's median outer step (sampling, logging, progress) against the pure meta-step."""
    import random
    import tempfile

    from metarun.config import compose
    from metarun.parts import build_algorithm, load_task, resolve_device
    from metarun.run import run

    steps = args.steps + args.warmup  # both sides: the median over the same steps, warm-up included
    overrides = [*args.loop_overrides, f"device={args.device}", f"train.outer_steps={steps}"]
    cfg = compose("config", overrides)
    out = Path(tempfile.mkdtemp())

    def pure_meta_step() -> float:
        """The same model, algorithm and episodes as the run (same seeds), without the loop around them."""
        device = resolve_device(cfg.device.name)
        torch.manual_seed(cfg.seed)
        family, tokenizer = load_task(cfg)
        algorithm = build_algorithm(cfg, tokenizer, device, n_train_classes=family.n_train_classes)
        params = dict(algorithm.model.named_parameters())
        trained = list(algorithm.trained_tensors().values())
        optimizer = algorithm.outer_optimizer(algorithm.outer_parameter_groups())
        rng, times = random.Random(cfg.seed), []
        algorithm.model.train()
        for _ in range(steps):
            episodes = [family.train_sampler().sample(rng).to(device) for _ in range(cfg.train.meta_batch_size)]
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


def timed_run(command: list[str], folder: Path, env: dict) -> dict:
    """Run a metarun command line into `folder`; its timing.json."""
    done = subprocess.run([*command, f"hydra.run.dir={folder}"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads((folder / "timing.json").read_text())


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
            timing = timed_run([*command, *overrides], folder, {**os.environ, "OMP_NUM_THREADS": str(threads)})
            steps_s[side].append(timing["outer_step_median_seconds"])
    (one, one_s), (many, many_s) = ((side, statistics.median(v)) for side, v in steps_s.items())
    return (
        f"Data-parallel meta-training (`{shlex.join(['metarun', *overrides])}`), median outer step: {one} "
        f"{1000 * one_s:.0f} ms, {many} {1000 * many_s:.0f} ms; the processes take {many_s / one_s:.2f}x the time "
        f"of the threads.\n"
    )


def thread_choice(args: argparse.Namespace) -> str:
    """One real metarun run with its default threads against every explicit `device.threads`, on idle CPUs and with
    `--busy` other processes spinning; rounds interleave the settings, and each one's median run time counts."""
    steps = args.steps + args.warmup
    overrides = [*args.loop_overrides, f"train.outer_steps={steps}"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the default is metarun's own choice
    cpus, metarun = len(os.sched_getaffinity(0)), str(Path(sys.executable).with_name("metarun"))
    out = args.out / f"threads-{time.strftime('%Y%m%d-%H%M%S')}"  # a folder of this benchmark's own runs
    settings = {"default": [], **{f"device.threads={n}": [f"device.threads={n}"] for n in range(1, cpus + 1)}}
    lines = []
    for busy in (0, args.busy):
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            seconds: dict[str, list[float]] = {name: [] for name in settings}
            for round_ in range(args.rounds):
                for name, extra in settings.items():
                    print(f"{busy} busy, round {round_ + 1}/{args.rounds}: {name}", flush=True)
                    folder = out / f"{busy}-busy-{name.replace('=', '')}-{round_}"  # no = in a Hydra value
                    timing = timed_run([metarun, *overrides, *extra], folder, env)
                    seconds[name].append(timing["meta_train_seconds"] + timing["test_seconds"])
        finally:
            for spinner in spinners:
                spinner.kill()
        median = {name: statistics.median(v) for name, v in seconds.items()}
        best = min((m, name) for name, m in median.items() if name != "default")
        cells = ", ".join(f"{name} {m:.1f} s" for name, m in median.items())
        ratio = median["default"] / best[0]
        lines.append(f"- {busy} other busy processes on {cpus} CPUs: {cells}; the default takes {ratio:.2f}x the "
                     f"time of the best explicit setting ({best[1]}).")  # fmt: skip
    return (
        f"Threads (`{shlex.join(['metarun', *overrides])}`), median of meta-training and meta-test time:\n\n"
        + "\n".join(lines)
        + "\n"
    )

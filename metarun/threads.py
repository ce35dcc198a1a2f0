"""How many CPU threads a process computes with by default: the CPUs it may use (affinity, cgroup quota), shared
with the other processes of its launch (torchrun's local ranks, a joblib sweep's jobs), and no more than are idle
now, because an intra-op pool whose threads wait for a CPU another process holds is slower than one thread."""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

SWEEP_JOBS = "sweep jobs at once"
IDLE_SAMPLE_SECONDS = 0.1  # long enough for /proc/stat's 10 ms ticks to tell a busy CPU from an idle one


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str


def usable_cpus() -> float:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota where one is set."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    quota = cgroup_quota()
    return min(cpus, quota) if quota else cpus


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in CPUs (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), None when unlimited or unknown."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        return None if quota <= 0 else quota / int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(idle, total) clock ticks summed over `cpus` since boot, from /proc/stat; None where there is none."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    idle = total = 0
    for line in lines:
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(t) for t in ticks]
            idle, total = idle + values[3] + values[4], total + sum(values[:8])  # idle + iowait; no guest time
    return idle, total


def idle_cpus(seconds: float = IDLE_SAMPLE_SECONDS) -> float | None:
    """How many of this process's CPUs were idle over the next `seconds` (this process sleeps meanwhile)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    before = _cpu_times(cpus)
    time.sleep(seconds)
    after = _cpu_times(cpus)
    if before is None or after is None or after[1] <= before[1]:
        return None
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def sharing_processes() -> tuple[int, str]:
    """How many processes of this launch compute at once on these CPUs, and which launcher says so."""
    if os.environ.get("LOCAL_WORLD_SIZE", "1") != "1":
        return int(os.environ["LOCAL_WORLD_SIZE"]), "torchrun ranks on this machine"
    jobs = _parallel_sweep_jobs()
    return (jobs, SWEEP_JOBS) if jobs > 1 else (1, "")


def _parallel_sweep_jobs() -> int:
    """A joblib-launched sweep's jobs at once (`hydra.launcher.n_jobs`, -1 being one per CPU), else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs == 1:
        return 1
    cpus = os.cpu_count() or 1
    return max(1, cpus + 1 + n_jobs if n_jobs < 0 else n_jobs)  # joblib's rule: -1 is all CPUs, -2 all but one


@functools.cache
def default_threads() -> ThreadChoice:
    """The threads for this process when neither `device.threads` nor OMP_NUM_THREADS says (chosen once, so that
    every run in a process computes alike)."""
    cpus = usable_cpus()
    sharers, launcher = sharing_processes()
    share = max(1, math.floor(cpus / sharers))
    idle = idle_cpus()
    threads = share if idle is None else max(1, min(share, round(idle)))
    why = f"{cpus:g} usable CPUs" + (f" / {sharers} {launcher}" if sharers > 1 else "")
    why += "" if idle is None else f", {idle:.1f} idle"
    return ThreadChoice(threads, why)


def choose_threads(asked: int | None) -> ThreadChoice:
    """`device.threads` when given, else OMP_NUM_THREADS when set (a launcher's or the user's), else the default."""
    if asked:
        return ThreadChoice(asked, "device.threads")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return ThreadChoice(int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS")
    return default_threads()

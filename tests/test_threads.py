"""The default thread count: the CPUs this process may use, shared with its launch's other processes, and no more
than are idle; `device.threads` and OMP_NUM_THREADS override it."""

import os

import pytest

from metarun import threads
from metarun.threads import ThreadChoice, cgroup_quota, choose_threads


@pytest.fixture
def machine(monkeypatch):
    """A machine of 4 usable CPUs whose idle count the test sets; nothing from the real launch leaks in."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4.0)
    threads.default_threads.cache_clear()
    yield lambda idle: monkeypatch.setattr(threads, "idle_cpus", lambda: idle)
    threads.default_threads.cache_clear()


@pytest.mark.parametrize(("idle", "expected"), [(4.0, 4), (3.8, 4), (1.2, 1), (0.0, 1), (None, 4)])
def test_the_default_uses_no_more_threads_than_cpus_are_idle(machine, idle, expected):
    machine(idle)
    assert choose_threads(None).threads == expected


def test_torchrun_ranks_on_one_machine_share_its_cpus(machine, monkeypatch):
    machine(4.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    choice = choose_threads(None)
    assert choice.threads == 1 and "3 torchrun ranks" in choice.why


def test_device_threads_then_omp_num_threads_override_the_default(machine, monkeypatch):
    machine(0.0)
    assert choose_threads(3) == ThreadChoice(3, "device.threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(None) == ThreadChoice(2, "OMP_NUM_THREADS")


def test_the_choice_is_made_once_per_process(machine):
    machine(4.0)
    first = choose_threads(None)
    machine(0.0)
    assert choose_threads(None) == first


@pytest.mark.parametrize(
    ("files", "expected"),
    [({"cpu.max": "150000 100000\n"}, 1.5), ({"cpu.max": "max 100000\n"}, None),
     ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
     ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None), ({}, None)],
)  # fmt: skip
def test_cgroup_quota_v2_and_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_quota(tmp_path) == expected


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="idle CPUs are read from Linux's /proc/stat")
def test_idle_cpus_are_counted_among_this_process_cpus():
    idle = threads.idle_cpus(0.05)
    assert idle is not None and 0.0 <= idle <= len(os.sched_getaffinity(0)) + 1e-9


@pytest.mark.parametrize(("n_jobs", "expected"), [(2, 2), (-1, os.cpu_count()), (1, 1)])
def test_a_joblib_sweeps_jobs_at_once_share_the_cpus(n_jobs, expected):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().cfg = OmegaConf.create({"hydra": {"launcher": {"n_jobs": n_jobs}}})  # as a job sees it
    try:
        assert threads.sharing_processes()[0] == expected
    finally:
        HydraConfig.instance().cfg = None

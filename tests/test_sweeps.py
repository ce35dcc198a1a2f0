"""Sweeps through Hydra's own plugins: the joblib and Slurm launcher presets and Optuna's sweeper."""

import json
import os
import re
import subprocess
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig

from conftest import SMOKE, command
from metarun.config import compose


def sweep(folder: Path, *overrides) -> subprocess.CompletedProcess:
    return command("metarun", "-m", *SMOKE, *overrides, f"hydra.sweep.dir={folder}")


def test_joblib_runs_jobs_side_by_side_and_a_failing_one_is_listed(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")  # each job's threads as metarun chooses them
    done = sweep(tmp_path, "launcher=joblib", "task.k_shot=1,30")  # 30 shots: more than a class holds
    assert done.returncode == 1, done.stderr[-3000:]
    (ok,), (failed,) = tmp_path.glob("0_*"), tmp_path.glob("1_*")  # job folders: number_overrides
    assert (ok / "metrics.json").is_file() and not (ok / "error.txt").exists()
    assert "k_shot" in (failed / "error.txt").read_text() and not (failed / "metrics.json").exists()
    summary = " ".join(done.stderr.split())
    assert "1 job(s) of the sweep failed" in summary and f"{failed.name}: task.k_shot + task.n_query" in summary
    hydra = yaml.safe_load((ok / ".hydra/hydra.yaml").read_text())["hydra"]
    assert hydra["runtime"]["choices"]["hydra/launcher"] == "joblib" and hydra["launcher"]["n_jobs"] == 2
    assert yaml.safe_load((ok / ".hydra/config.yaml").read_text())["device"]["threads"] is None
    cpus = len(os.sched_getaffinity(0))
    # each job its share of the CPUs: joblib's workers get OMP_NUM_THREADS from loky, else metarun divides them
    shares = re.findall(r"\| threads (\d+) \((OMP_NUM_THREADS|\S+ usable CPUs / 2 sweep jobs at once)", done.stdout)
    assert len(shares) == 1 and 1 <= int(shares[0][0]) <= max(1, cpus // 2), shares  # the job that got past its data


def test_the_slurm_preset_composes_with_its_limits():
    cfg = compose("config", ["launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = HydraConfig.get().launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.timeout_min, launcher.gpus_per_node, launcher.partition) == (240, 1, "gpu")
    assert cfg.device.threads == launcher.cpus_per_task == 8


def test_optuna_searches_and_reports_the_best_validation_accuracy(tmp_path):
    done = sweep(tmp_path, "hparams_search=maml", "hydra.sweeper.n_trials=3")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(tmp_path.glob("*/metrics.json"))
    assert len(runs) == 3
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(json.loads(p.read_text())["val_acc"] for p in runs)
    assert set(best["best_params"]) == {"algo.inner_lr", "algo.outer_optimizer.lr", "algo.inner_steps"}


def test_a_failing_trial_is_failed_for_optuna_and_the_search_goes_on(tmp_path):
    presets = (
        tmp_path / "conf" / "hparams_search"
    )  # the maml search, with shots that fail (30: more than a class holds)
    presets.mkdir(parents=True)
    (presets / "failing.yaml").write_text(
        "# @package _global_\ndefaults:\n  - maml\nhydra:\n  sweeper:\n    params:\n      task.k_shot: choice(1, 30)\n"
    )
    done = sweep(tmp_path / "sweep", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hparams_search=failing",
                 "hydra.sweeper.n_trials=4")  # fmt: skip
    failed = list((tmp_path / "sweep").glob("*/error.txt"))
    finished = list((tmp_path / "sweep").glob("*/metrics.json"))
    assert failed and finished and len(failed) + len(finished) == 4, done.stderr[-3000:]  # all 4 trials ran
    assert done.returncode == 1 and f"{len(failed)} job(s) of the sweep failed" in " ".join(done.stderr.split())

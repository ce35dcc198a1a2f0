"""Every model x algo x task combination composes and runs a few steps on data=synthetic (compose API)."""

import itertools
import json

import pytest
from hydra import compose, initialize_config_dir

from metarun.cli import CONF_DIR
from metarun.run import run

TINY_BUDGET = [
    "data=synthetic", "data.examples_per_class=12", "task.n_query=3", "train.outer_steps=2",
    "train.meta_batch_size=1", "eval.val_interval=2", "eval.val_episodes=1", "eval.test_episodes=3",
    "algo.eval_inner_steps=1", "device=cpu",
]  # fmt: skip
MODELS, ALGOS, TASKS = ("tiny", "small", "base"), ("maml", "fomaml", "reptile", "finetune", "scratch"), ("fewshot_cls", "domain_adapt")


def compose_config(*overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*TINY_BUDGET, *overrides])


@pytest.mark.parametrize("model,algo,task", list(itertools.product(MODELS, ALGOS, TASKS)))
def test_combination_runs(tmp_path, model, algo, task):
    inner = ["algo.inner_steps=1"] if algo in ("maml", "fomaml", "reptile") else []
    val = run(compose_config(f"model={model}", f"algo={algo}", f"task={task}", *inner), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= val <= 1.0 and metrics["val_acc"] == val
    assert metrics["test_episodes"] == 3 and 0.0 <= metrics["test_acc"] <= 1.0
    assert (metrics["best_step"] is None) == (algo == "scratch")


@pytest.mark.parametrize("experiment", ["synthetic_shared_labels"])
def test_experiment_presets_compose_and_run(tmp_path, experiment):
    cfg = compose_config(f"experiment={experiment}")
    run(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["task"] == "domain_adapt"

"""Every model x algo x task combination composes and runs a few steps on data=synthetic (compose API)."""

import functools
import itertools
import json
import re
from pathlib import Path

import pytest
from metarun.config import compose, group_options
from omegaconf import OmegaConf

from conftest import CLINC150, compose_config
from metarun.run import run

MODELS, ALGOS, TASKS = ("tiny", "small", "base"), group_options("algo"), ("fewshot_cls", "domain_adapt")
# base cells take twice a tiny one and prove only that base.yaml composes: one stays in the default run
COMBINATIONS = [
    pytest.param(*cell, marks=[pytest.mark.slow] if cell[0] == "base" and cell[1:] != ("maml", "fewshot_cls") else [])
    for cell in itertools.product(MODELS, ALGOS, TASKS)
]


@functools.cache
def one_step_each(algo: str) -> tuple[str, ...]:
    """One inner step in meta-training and one at test time, for the algorithms whose config has those settings
    (prototype classifiers adapt without steps)."""
    settings = compose("config", [f"algo={algo}"]).algo
    return tuple(f"algo.{key}=1" for key in ("eval_inner_steps", "inner_steps") if key in settings)


@pytest.mark.parametrize("model,algo,task", COMBINATIONS)
def test_combination_runs(tmp_path, model, algo, task):
    val = run(compose_config(f"model={model}", f"algo={algo}", f"task={task}", *one_step_each(algo)), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= val <= 1.0 and metrics["val_acc"] == val
    assert metrics["test_episodes"] == 3 and 0.0 <= metrics["test_acc"] <= 1.0
    assert (metrics["best_step"] == 0) == (algo in ("scratch", "prototypes"))  # their weights as they start


@pytest.mark.parametrize("experiment", ["synthetic_shared_labels"])
def test_experiment_presets_compose_and_run(tmp_path, experiment):
    cfg = compose_config(f"experiment={experiment}")
    run(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["task"] == "domain_adapt"


def test_fixed_evaluation_tasks_adapt_on_their_train_file_and_score_the_whole_test_file(tmp_path):
    """The ARSC protocol: each held-out domain brings its own small train file and a test file."""
    from metarun.data import generate_synthetic

    corpus = generate_synthetic(examples_per_class=12)
    specs = []
    for domain in ("domain_08", "domain_09"):
        rows = [
            i
            for i, d in enumerate(corpus.domains)
            if d == domain and corpus.labels[i].endswith(("_00", "_01", "_02", "_03", "_04"))
        ]
        files = {}
        for part, keep in (("train", lambda k: k < 2), ("test", lambda k: k >= 2)):
            seen = {}
            lines = []
            for i in rows:
                seen[corpus.labels[i]] = seen.get(corpus.labels[i], -1) + 1
                if keep(seen[corpus.labels[i]]):
                    lines.append(json.dumps({"text": corpus.texts[i], "label": corpus.labels[i]}))
            files[part] = tmp_path / f"{domain}.{part}.jsonl"
            files[part].write_text("\n".join(lines) + "\n")
        specs.append(f"{{name:{domain},train:'{files['train']}',test:'{files['test']}'}}")
    cfg = compose_config("task=fixed_tasks", f"task.eval_tasks=[{','.join(specs)}]", "data.examples_per_class=12")
    run(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(metrics["per_task_acc"]) == ["domain_08", "domain_09"] and metrics["test_episodes"] == 2
    assert metrics["test_acc"] == sum(metrics["per_task_acc"].values()) / 2
    for acc in metrics["per_task_acc"].values():
        assert acc * 50 == round(acc * 50)  # scored on all 50 test rows (5 labels x 10)


@pytest.mark.parametrize(
    "experiment, task, shots, held_out",
    [("clinc150_intents", "fewshot_cls", 1, 50), ("clinc150_intents_5shot", "fewshot_cls", 5, 50),
     ("clinc150_domains", "domain_adapt", 1, 2), ("clinc150_domains_5shot", "domain_adapt", 5, 2)],
)  # fmt: skip
def test_clinc150_benchmark_cells_have_one_preset_each(experiment, task, shots, held_out):
    cfg = compose("config", [f"experiment={experiment}", "algo=maml"])
    picked = cfg.choices
    assert (picked.data, picked.task, cfg.task.k_shot, cfg.task.split.test) == ("clinc150", task, shots, held_out)
    assert picked.model == "small" and picked.algo == "maml"


ARSC = CLINC150.parent / "arsc_source"


@pytest.mark.skipif(not ARSC.is_dir(), reason="no arsc_source/ in $METARUN_DATA or ../shared/data")
def test_the_arsc_dev_protocol_runs_on_a_slice_of_its_source_domains(tmp_path, caplog):
    slice_ = (
        f"data.files=[{ARSC}/baby.t2.train.jsonl,{ARSC}/beauty.t2.train.jsonl,{ARSC}/tools_hardware.t2.train.jsonl]"
    )
    cfg = compose("config", ["experiment=arsc_dev", "budget=smoke", "model=tiny", "device=cpu", slice_])
    run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_episodes"] == metrics["val_episodes"] == 12  # 4 dev domains x 3 thresholds, dev files
    assert sorted(metrics["per_task_recall"]["apparel.t2"]) == ["-1", "1"]
    assert "tools_hardware.t2" in caplog.text and "left out" in caplog.text  # 27 reviews: too few for episodes


def test_the_named_arsc_recipe_is_the_measured_one():
    results = (Path(__file__).parents[1] / "docs" / "results.md").read_text()
    measured = re.search(r"--variant 'maml-top4-lr2x5=([^']+)'", results).group(1).split()  # the table's row
    named = compose("config", ["experiment=arsc_dev", "tuning=maml_minilm_arsc"])
    spelled_out = compose("config", ["experiment=arsc_dev", *measured])
    assert OmegaConf.to_container(named) == OmegaConf.to_container(spelled_out)
    assert named.algo.inner_lr == 2.0 and named.train.outer_steps == 400  # not maml_minilm's own settings


def test_the_official_arsc_preset_names_the_target_files_in_the_folder_given():
    cfg = compose("config", ["experiment=arsc", "paths.arsc_targets=/data/arsc_targets"])
    tasks = cfg.task.eval_tasks
    assert [t.name for t in tasks] == [f"{d}.{t}" for d in ("books", "dvd", "electronics", "kitchen_housewares")
                                       for t in ("t2", "t4", "t5")]  # fmt: skip
    assert (
        tasks[4].test == "/data/arsc_targets/dvd.t4.test.jsonl"
        and tasks[4].dev == "/data/arsc_targets/dvd.t4.dev.jsonl"
    )
    assert cfg.data.files == [f"{cfg.paths.data}/arsc_source/*.train.jsonl"]  # every source domain meta-trains
    assert (cfg.task.labels, cfg.task.eval_shots, cfg.model.max_len) == ("fixed", 5, 128)  # arsc_dev's protocol

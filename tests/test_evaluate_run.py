"""`metarun-eval`: score a saved run again, on its own test split or on other data and tasks."""

import hashlib
import json
from pathlib import Path

import pytest
from metarun.config import compose

from conftest import CLINC150, SMOKE_DATA, command, compose_config
from metarun import cli
from metarun.data import generate_synthetic
from metarun.errors import UserError
from metarun.evaluate_run import evaluate_run
from metarun.run import run


def trained(folder: Path, *overrides) -> Path:
    run(compose_config(*overrides), folder)
    return folder


def evaluated(run_folder: Path, out: Path, *overrides) -> dict:
    cfg = compose("evaluate", [f"run={run_folder}", *overrides])
    evaluate_run(cfg, out, list(overrides))
    return json.loads((out / "metrics.json").read_text())


def fingerprint(folder: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def other_data(path: Path, seed: int = 5) -> Path:
    """Labelled text the run never saw: other classes, other words."""
    corpus = generate_synthetic(seed=seed, n_domains=2, classes_per_domain=6, examples_per_class=20)
    path.write_text("".join(json.dumps({"text": t, "label": y, "domain": d}) + "\n"
                            for t, y, d in zip(corpus.texts, corpus.labels, corpus.domains)))  # fmt: skip
    return path


@pytest.mark.parametrize("algo", ["maml", "finetune"])
def test_its_own_test_split_gives_the_runs_own_numbers(tmp_path, algo):
    folder = trained(tmp_path / "run", f"algo={algo}")
    before = fingerprint(folder)
    metrics = evaluated(folder, tmp_path / "eval")
    original = json.loads((folder / "metrics.json").read_text())
    for key in ("test_acc", "test_ci95", "test_episodes", "algo", "model", "n_way", "k_shot"):
        assert metrics[key] == original[key], key
    assert metrics["step"] == original["best_step"] and fingerprint(folder) == before  # the run is only read


def test_its_config_is_headed_by_the_runs_own_options(tmp_path, capsys):
    folder = trained(tmp_path / "run", "algo=reptile")
    capsys.readouterr()
    evaluated(folder, tmp_path / "eval", "task.n_query=2")
    out = " ".join(capsys.readouterr().out.split())
    header = out.split(")", 1)[0]
    assert header.startswith("config (model=tiny, algo=reptile, task=fewshot_cls, data=synthetic")
    assert "maml" not in header  # the evaluation config's own default algorithm
    assert f"scores written to: {(tmp_path / 'eval' / 'metrics.json').resolve()}" in out


def test_other_data_and_another_task_shape(tmp_path):
    folder = trained(tmp_path / "run")
    data = other_data(tmp_path / "mine.jsonl")
    metrics = evaluated(folder, tmp_path / "eval", "data=local", f"data.files={data}", "task.n_way=3",
                        "task.k_shot=5", "eval.test_episodes=20")  # fmt: skip
    assert metrics["n_way"] == 3 and metrics["k_shot"] == 5 and metrics["test_episodes"] == 20
    assert metrics["data"] == "local" and metrics["changed"]["task.n_way"] == 3
    assert 0 <= metrics["test_acc"] <= 1 and metrics["test_ci95"] > 0


def test_fixed_tasks_on_other_data_report_three_metrics(tmp_path):
    folder = trained(tmp_path / "run", "algo=protonet")
    train, test = other_data(tmp_path / "train.jsonl", seed=5), other_data(tmp_path / "test.jsonl", seed=5)
    spec = f"[{{name:mine,train:'{train}',test:'{test}'}}]"
    metrics = evaluated(folder, tmp_path / "eval", "task=fixed_tasks", f"task.eval_tasks={spec}", "task.n_way=12")
    assert list(metrics["per_task_acc"]) == ["mine"] and metrics["test_balanced_acc"] is not None
    assert metrics["test_ci95"] is None  # one task: no interval, and no NaN


def test_a_fixed_task_run_changes_only_the_task_settings_given(tmp_path, run_cli):
    train, test = other_data(tmp_path / "train.jsonl"), other_data(tmp_path / "test.jsonl")
    folder = trained(tmp_path / "run", "algo=protonet", "task=fixed_tasks", "task.n_way=12", "task.eval_shots=2",
                     f"task.eval_tasks=[{{name:mine,train:'{train}',test:'{test}'}}]", "task.split.test=0")  # fmt: skip
    other = other_data(tmp_path / "other.jsonl", seed=6)
    tasks = f"task.eval_tasks=[{{name:other,train:'{other}',test:'{other}'}}]"
    code, out, err = run_cli(cli.eval_main, f"run={folder}", tasks, f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0, err[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics["per_task_acc"]) == ["other"] and list(metrics["changed"]) == ["task.eval_tasks"]
    assert "eval_shots: 2" in out and "labels: permuted" in out  # the run's own task settings, but the one given


def test_another_task_family_on_the_runs_own_data_is_refused(tmp_path):
    folder = trained(tmp_path / "run")
    with pytest.raises(UserError, match=r"task=class_splits \(a family that splits the data otherwise\)"):
        evaluated(folder, tmp_path / "eval", "task=class_splits", f"task.class_splits={tmp_path}")


def test_scored_dev_scores_each_fixed_tasks_dev_file(tmp_path, capsys):
    folder = trained(tmp_path / "run", "algo=protonet")
    train, test = other_data(tmp_path / "train.jsonl"), other_data(tmp_path / "test.jsonl")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(test.read_text().splitlines(keepends=True)[::3]))  # a third of the test file
    spec = f"task.eval_tasks=[{{name:mine,train:'{train}',dev:'{dev}',test:'{test}'}}]"
    capsys.readouterr()
    on_dev = evaluated(folder, tmp_path / "dev", "task=fixed_tasks", spec, "task.n_way=12", "scored=dev")
    scoring = capsys.readouterr().out.split("select_by", 1)[1]  # after the config: progress, the table, where
    assert "dev files 1/1 (100%)" in scoring and "│ dev files" in scoring and "meta-test" not in scoring
    as_test = f"task.eval_tasks=[{{name:mine,train:'{train}',test:'{dev}'}}]"  # the same file named as the test
    expected = evaluated(folder, tmp_path / "as-test", "task=fixed_tasks", as_test, "task.n_way=12")
    assert on_dev["scored"] == "dev" and expected["scored"] == "test"
    assert on_dev["per_task_acc"] == expected["per_task_acc"]
    assert on_dev["per_task_recall"] == expected["per_task_recall"]
    on_test = evaluated(folder, tmp_path / "test", "task=fixed_tasks", spec, "task.n_way=12")
    assert sum(on_test["per_task_recall"]["mine"].values()) != sum(on_dev["per_task_recall"]["mine"].values())
    with pytest.raises(UserError, match=r"scored=dev .* these fixed tasks name no dev file: mine"):
        evaluated(folder, tmp_path / "no-dev", "task=fixed_tasks", as_test, "task.n_way=12", "scored=dev")
    with pytest.raises(UserError, match=r"scored=dev .* the run has no fixed tasks"):
        evaluated(folder, tmp_path / "no-tasks", "scored=dev")


def test_settings_the_checkpoint_was_trained_with_cannot_change(tmp_path):
    folder = trained(tmp_path / "run")
    for override in ("model=small", "algo.inner_lr=0.1", "train.outer_steps=5"):
        with pytest.raises(UserError, match=f"metarun-eval cannot change {override.split('=')[0]}"):
            evaluated(folder, tmp_path / "eval", override)


@pytest.mark.skipif(not CLINC150.is_dir(), reason="no clinc150/ in $METARUN_DATA or ../shared/data")
def test_metarun_eval_scores_a_clinc150_run_on_a_local_file_with_other_labels(tmp_path):
    folder = trained(tmp_path / "run", "data=clinc150", "task.split.test=50", "task.split.val=15")
    data = other_data(tmp_path / "mine.jsonl")
    result = command("metarun-eval", f"run={folder}", "data=local", f"data.files={data}", "task.n_way=4",
                     "eval.test_episodes=10", f"hydra.run.dir={tmp_path / 'eval'}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["data"] == "local" and metrics["n_way"] == 4 and metrics["test_episodes"] == 10
    assert (tmp_path / "eval" / ".hydra" / "overrides.yaml").is_file() and "meta-test" in result.stdout


def test_the_adaptation_settings_it_may_change_are_used(tmp_path):
    folder = trained(tmp_path / "run")  # MAML with a zeroed head: without inner steps every query is class 0
    metrics = evaluated(folder, tmp_path / "eval", "algo.eval_inner_steps=0")
    assert metrics["test_acc"] == pytest.approx(1 / 5) and metrics["changed"] == {"algo.eval_inner_steps": 0}


def test_the_runs_own_data_keeps_the_runs_own_split(tmp_path):
    folder = trained(tmp_path / "run")
    original = json.loads((folder / "metrics.json").read_text())
    named = evaluated(folder, tmp_path / "named", *SMOKE_DATA)
    assert named["test_acc"] == original["test_acc"]  # the same data named again is not other data
    for override in ("task.split.seed=1", "task=domain_adapt"):
        with pytest.raises(UserError, match="would score classes the run meta-trained on"):
            evaluated(folder, tmp_path / "eval", override)


def test_data_changed_since_the_run_is_refused_not_scored(tmp_path):
    data = other_data(tmp_path / "data.jsonl")  # 12 classes: split 2 test, 2 val, 8 train
    folder = trained(tmp_path / "run", "data=local", f"data.files={data}", "task.n_way=2", "task.split.test=2",
                     "task.split.val=2")  # fmt: skip
    splits, original = json.loads((folder / "splits.json").read_text()), data.read_text()
    rows = [json.loads(r) for r in original.splitlines()]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows if r["label"] != splits["train"][0]))  # a class fewer
    with pytest.raises(UserError, match=rf"The data is not the data of the run in {folder}: .*another splits.json"):
        evaluated(folder, tmp_path / "eval")
    test_row = next(i for i, r in enumerate(rows) if r["label"] in splits["test"])
    rows[test_row]["text"] += " rewritten"  # the same classes, a meta-test row changed
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=rf"The data is not the data of the run in {folder}: .*another data.json"):
        evaluated(folder, tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()
    data.write_text(original)
    assert 0 <= evaluated(folder, tmp_path / "eval")["test_acc"] <= 1  # its own data again


def test_test_time_algorithm_settings_apply_to_the_runs_that_have_them(tmp_path):
    folder = trained(tmp_path / "run", "algo=protonet")
    metrics = evaluated(folder, tmp_path / "eval", "+algo.transductive_steps=3")
    assert metrics["changed"] == {"algo.transductive_steps": 3} and 0 <= metrics["test_acc"] <= 1
    maml = trained(tmp_path / "maml")
    with pytest.raises(UserError, match=r"algo.transductive_steps: not a setting of maml"):
        evaluated(maml, tmp_path / "eval-maml", "+algo.transductive_steps=3")
    with pytest.raises(UserError, match=r"algo.eval_inner_steps: not a setting of protonet"):
        evaluated(folder, tmp_path / "eval-steps", "algo.eval_inner_steps=3")


def test_a_test_time_setting_without_its_plus_is_told_to_take_one(tmp_path, run_cli):
    folder = trained(tmp_path / "run", "algo=protonet")
    code, _, stderr = run_cli(cli.eval_main, f"run={folder}", "algo.transductive_steps=3",
                              f"hydra.run.dir={tmp_path / 'eval'}")  # fmt: skip
    assert code == 2 and "Traceback" not in stderr
    assert "+algo.transductive_steps=<value>" in " ".join(stderr.split())  # Hydra's advice, not "no setting"


def test_the_device_groups_threads_are_applied(tmp_path, monkeypatch):
    folder = trained(tmp_path / "run")
    asked = []
    monkeypatch.setattr("torch.set_num_threads", asked.append)
    evaluated(folder, tmp_path / "eval", "device.threads=3")
    assert asked == [3]

"""The task family docs/extending.md adds: class splits given as files (task=class_splits)."""

import json

import pytest

from metarun.config import check_config, compose
from metarun.data import generate_synthetic
from metarun.errors import UserError
from metarun.evaluate_run import evaluate_run
from metarun.parts import load_task
from metarun.run import run

CORPUS = generate_synthetic(examples_per_class=12)
LABELS = sorted(set(CORPUS.labels))  # 120 classes


def split_folder(tmp_path, train, val, test):
    """A data file of the synthetic corpus and a folder of the three label files, as a smoke run's overrides."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(CORPUS.texts, CORPUS.labels)))
    folder = tmp_path / "split"
    folder.mkdir(exist_ok=True)
    for name, labels in (("train", train), ("valid", val), ("test", test)):
        (folder / f"{name}.labels.txt").write_text("\n".join(labels) + "\n\n")  # a blank line is skipped
    return ["budget=smoke", "device=cpu", "task=class_splits", f"task.class_splits={folder}", "data=local",
            f"data.files={data}"]  # fmt: skip


def compose_config(*overrides):
    return compose("config", overrides)


def test_episodes_come_from_the_classes_each_file_lists(tmp_path):
    train, val, test = LABELS[40:], LABELS[:20], LABELS[20:40]  # not what a seeded random split would give
    family, _ = load_task(compose_config(*split_folder(tmp_path, train, val, test)))
    assert [family.samplers[name].classes for name in ("train", "val", "test")] == [train, val, test]
    run(compose_config(*split_folder(tmp_path, train, val, test)), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "splits.json").read_text()) == {"train": train, "val": val, "test": test}


@pytest.mark.parametrize(
    "files, message",
    [
        ((LABELS[40:], LABELS[:20], LABELS[19:40]), f"labels '{LABELS[19]}' are in more than one split file"),
        ((LABELS[40:], LABELS[:20], [*LABELS[20:40], "nowhere"]), r"labels 'nowhere' are not in .*data.jsonl"),
        ((LABELS[41:], LABELS[:20], LABELS[20:40]), r"of the data are in no split file"),
    ],
)
def test_split_files_that_do_not_cover_the_data_once_are_refused(tmp_path, files, message):
    with pytest.raises(UserError, match=message):
        load_task(compose_config(*split_folder(tmp_path, *files)))


def test_a_missing_split_file_is_named(tmp_path):
    overrides = split_folder(tmp_path, LABELS[40:], LABELS[:20], LABELS[20:40])
    (tmp_path / "split" / "valid.labels.txt").unlink()
    with pytest.raises(UserError, match=r"valid.labels.txt does not exist"):
        load_task(compose_config(*overrides))


def test_metarun_eval_refuses_another_split_of_the_runs_own_data(tmp_path):
    overrides = split_folder(tmp_path, LABELS[40:], LABELS[:20], LABELS[20:40])
    run(compose_config(*overrides), tmp_path / "run")
    other = tmp_path / "other"
    other.mkdir()
    for name, labels in (("train", LABELS[:80]), ("valid", LABELS[80:100]), ("test", LABELS[100:])):
        (other / f"{name}.labels.txt").write_text("\n".join(labels))
    change = ["task=class_splits", f"task.class_splits={other}"]
    with pytest.raises(UserError, match="would score classes the run meta-trained on"):
        evaluate_run(compose("evaluate", [f"run={tmp_path / 'run'}", *change]), tmp_path / "eval", change)
    again = ["eval.test_episodes=2"]  # its own split, as the run names it: scored
    assert 0 <= evaluate_run(compose("evaluate", [f"run={tmp_path / 'run'}", *again]), tmp_path / "own", again) <= 1


def test_the_splits_may_be_given_in_the_config_as_lists(tmp_path):
    train, val, test = LABELS[40:], LABELS[:20], LABELS[20:40]
    settings = [o for o in split_folder(tmp_path, train, val, test) if not o.startswith("task.class_splits=")]
    inline = [f"task.classes.{name}=[{','.join(labels)}]" for name, labels in (("train", train), ("val", val),
                                                                                ("test", test))]  # fmt: skip
    family, _ = load_task(compose_config(*settings, *inline))
    assert [family.samplers[name].classes for name in ("train", "val", "test")] == [train, val, test]
    with pytest.raises(UserError, match="takes its split from one place"):
        check_config(compose_config(*split_folder(tmp_path, train, val, test), *inline))


def test_the_class_splits_benchmark_averages_over_the_splits(tmp_path, monkeypatch):
    from conftest import load_script

    train, val, test = LABELS[40:], LABELS[:20], LABELS[20:40]
    settings = split_folder(tmp_path, train, val, test)
    for name in ("01", "02"):  # two splits of the same classes, under one root
        (tmp_path / "splits" / name).mkdir(parents=True)
        for file in (tmp_path / "split").iterdir():
            (tmp_path / "splits" / name / file.name).write_text(file.read_text())
    overrides = [o for o in settings if not o.startswith(("task=", "task.class_splits="))]
    body = load_script("class_splits_benchmark").main(
        ["--experiment", "intents_liu", "--root", str(tmp_path / "splits"), "--algos", "prototypes", "--shots", "1",
         "--test-episodes", "4", "--out", str(tmp_path / "out"), "model=tiny", *overrides])  # fmt: skip
    accuracy = [json.loads((tmp_path / "out" / f"prototypes_1shot_{n}" / "metrics.json").read_text())["test_acc"]
                for n in ("01", "02")]  # fmt: skip
    assert f"| prototypes | 1 | {100 * sum(accuracy) / 2:.1f} ± " in body and "| split 01 | split 02 |" in body

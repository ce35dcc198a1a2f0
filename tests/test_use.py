"""A finished run as a model: load it, adapt it on labelled examples, predict; from Python and the shell."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from metarun import cli, load
from metarun.config import group_options
from metarun.data import generate_synthetic
from metarun.episodes import Episode
from metarun.errors import UserError
from metarun.evaluation import evaluate
from metarun.run import run

from conftest import command, compose_config

CORPUS = generate_synthetic(examples_per_class=12)  # the texts of SMOKE's data, which the runs here train on


def trained(folder: Path, *overrides) -> Path:
    run(compose_config(*overrides), folder)
    return folder


def examples(folder: Path, labels: int, shots: list[int], queries: int = 4):
    """Texts of `labels` meta-test classes of the run: shots[i] support examples of the i-th, then queries."""
    classes = json.loads((folder / "splits.json").read_text())["test"][:labels]
    support, query = ([], []), ([], [])
    for cls, k in zip(classes, shots):
        texts = [t for t, y in zip(CORPUS.texts, CORPUS.labels) if y == cls]
        support[0].extend(texts[:k]), support[1].extend([cls] * k)
        query[0].extend(texts[k : k + queries]), query[1].extend([cls] * queries)
    return support, query


@pytest.mark.parametrize("algo", group_options("algo"))
def test_predictions_on_an_episode_score_what_evaluation_scores(tmp_path, algo):
    model = load(trained(tmp_path, f"algo={algo}"))
    (support_x, support_y), (query_x, query_y) = examples(tmp_path, 5, [2, 1, 3, 1, 2])
    adapted = model.adapt(support_x, support_y, seed=7)
    predicted = adapted.predict(query_x)
    ids = {label: i for i, label in enumerate(adapted.labels)}
    episode = Episode(model.encode(support_x), torch.tensor([ids[y] for y in support_y]), model.encode(query_x),
                      torch.tensor([ids[y] for y in query_y]), torch.arange(5))  # fmt: skip
    torch.manual_seed(7)  # the same draws for a fresh head as adapt(seed=7)
    scored = evaluate(model.algorithm, dict(model.algorithm.model.named_parameters()), [episode], model.device)
    assert sum(p == y for p, y in zip(predicted, query_y)) / len(query_y) == scored.mean
    probabilities = adapted.predict_proba(query_x)
    assert probabilities.shape == (len(query_x), 5)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(len(query_x)))
    assert adapted.predict(query_x) == predicted  # adapting changed nothing in the loaded model


def test_a_transductive_run_predicts_as_its_evaluation_scored(tmp_path):
    model = load(trained(tmp_path, "algo=protonet", "algo.transductive_steps=3"))
    (support_x, support_y), (query_x, query_y) = examples(tmp_path, 5, [1, 1, 1, 1, 1], queries=6)
    adapted = model.adapt(support_x, support_y, unlabelled=query_x)
    episode = Episode(model.encode(support_x), torch.arange(5), model.encode(query_x),
                      torch.arange(5).repeat_interleave(6), torch.arange(5))  # fmt: skip
    scored = evaluate(model.algorithm, dict(model.algorithm.model.named_parameters()), [episode], model.device)
    assert sum(p == y for p, y in zip(adapted.predict(query_x), query_y)) / len(query_y) == scored.mean
    inductive = model.adapt(support_x, support_y)
    assert not torch.allclose(adapted.params["head.weight"], inductive.params["head.weight"])


@pytest.mark.parametrize("algo", ["protonet", "fomaml"])
def test_any_number_of_labels_with_unbalanced_examples(tmp_path, algo):
    model = load(trained(tmp_path, f"algo={algo}"))
    (support_x, support_y), (query_x, _) = examples(tmp_path, 3, [5, 1, 2])
    adapted = model.adapt(support_x, support_y)
    assert adapted.labels == sorted(set(support_y)) and adapted.predict_proba(query_x).shape == (len(query_x), 3)
    assert set(adapted.predict(query_x)) <= set(support_y)
    assert model.adapt(support_x, support_y).predict(query_x) == adapted.predict(query_x)  # deterministic


def test_a_meta_learned_head_adapts_to_its_own_number_of_labels_only(tmp_path):
    model = load(trained(tmp_path, "algo=fomaml", "algo.head_init=learned"))
    (support_x, support_y), _ = examples(tmp_path, 3, [2, 2, 2])
    with pytest.raises(UserError, match="meta-learned a 5-way head"):
        model.adapt(support_x, support_y)


def test_texts_that_are_not_a_list_of_non_empty_strings_are_refused(tmp_path):
    model = load(trained(tmp_path, "algo=protonet"))
    (support_x, support_y), _ = examples(tmp_path, 3, [2, 2, 2])
    adapted = model.adapt(support_x, support_y)
    with pytest.raises(UserError, match=r"predict takes a list of texts, not one string \('refund my order'\)"):
        adapted.predict("refund my order")  # would be read as 15 one-character texts
    for texts, shown in (([support_x[0], None], "None"), ([support_x[0], " "], "' '")):
        with pytest.raises(UserError, match=rf"predict: text 1 is {shown}, but every text must be a non-empty string"):
            adapted.predict_proba(texts)
    with pytest.raises(UserError, match=r"adapt: text 0 is ''"):
        model.adapt(["", *support_x[1:]], support_y)
    with pytest.raises(UserError, match=r"adapt's unlabelled takes a list of texts, not one string"):
        model.adapt(support_x, support_y, unlabelled="one text")


def test_metarun_predict_never_writes_over_its_inputs_and_over_a_file_only_when_asked(tmp_path, monkeypatch, run_cli):
    folder = trained(tmp_path / "run", "algo=protonet")
    (support_x, support_y), (query_x, _) = examples(folder, 3, [2, 2, 2])
    support = write_rows(tmp_path / "support.csv", [{"text": t, "label": y} for t, y in zip(support_x, support_y)])
    inputs = write_rows(tmp_path / "inputs.jsonl", [{"text": t} for t in query_x])
    monkeypatch.chdir(tmp_path)
    args = [f"run={folder}", f"support={support}", f"inputs={inputs}"]
    kept = inputs.read_text()
    for out, extra, message in ((inputs, ["overwrite=true"], "is the inputs file"),
                                (tmp_path / "no" / "p.csv", [], "does not exist; create it")):  # fmt: skip
        code, _, stderr = run_cli(cli.predict_main, *args, f"out={out}", *extra)
        assert code == 2 and message in " ".join(stderr.split())
    assert inputs.read_text() == kept
    (tmp_path / "p.csv").write_text("mine\n")
    code, _, stderr = run_cli(cli.predict_main, *args, "out=p.csv")
    assert code == 2 and "already exists" in stderr and (tmp_path / "p.csv").read_text() == "mine\n"
    assert run_cli(cli.predict_main, *args, "out=p.csv", "overwrite=true")[0] == 0
    assert (tmp_path / "p.csv").read_text().startswith("text,label,")


def test_metarun_predict_refuses_empty_input_texts(tmp_path, monkeypatch, run_cli):
    folder = trained(tmp_path / "run", "algo=protonet")
    (support_x, support_y), _ = examples(folder, 3, [2, 2, 2])
    support = write_rows(tmp_path / "support.csv", [{"text": t, "label": y} for t, y in zip(support_x, support_y)])
    inputs = write_rows(tmp_path / "inputs.jsonl", [{"text": "hello"}, {"text": ""}, {"text": "bye"}])
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(cli.predict_main, f"run={folder}", f"support={support}", f"inputs={inputs}", "out=p.csv")
    assert code == 2 and "has 1 empty text(s) (rows 2, counting from 1)" in " ".join(stderr.split())
    assert not (tmp_path / "p.csv").exists()


def test_best_pt_holds_what_using_the_model_needs_and_format_3_still_loads(tmp_path):
    folder = trained(tmp_path / "run", "algo=maml")
    best_pt, last_pt = folder / "checkpoints/best.pt", folder / "checkpoints/last.pt"
    best, last = torch.load(best_pt, weights_only=True), torch.load(last_pt, weights_only=True)
    assert "optimizer" not in best and "rng" not in best and "optimizer" in last and "rng" in last
    assert best_pt.stat().st_size < last_pt.stat().st_size / 2  # last.pt also holds Adam's two moments
    (support_x, support_y), (query_x, _) = examples(folder, 3, [2, 2, 2])
    expected = load(folder).adapt(support_x, support_y).predict_proba(query_x)
    task = {k: v for k, v in best["config"]["task"].items() if k != "_target_"}  # as format 3 wrote it
    old = {**best, "format": 3, "config": {**best["config"], "task": {**task, "eval_tasks": [], "eval_shots": None}}}
    torch.save(old, best_pt)
    torch.testing.assert_close(load(folder).adapt(support_x, support_y).predict_proba(query_x), expected)


def test_keep_last_false_leaves_only_best_pt_which_still_loads_and_scores(tmp_path, run_cli):
    folder = trained(tmp_path / "run", "algo=maml", "train.keep_last=false")
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.pt"]
    (support_x, support_y), (query_x, _) = examples(folder, 3, [2, 2, 2])
    assert load(folder).adapt(support_x, support_y).predict_proba(query_x).shape == (len(query_x), 3)
    code, _, stderr = run_cli(cli.eval_main, f"run={folder}", "checkpoint=last")
    assert code == 2 and "it has best.pt: ask for checkpoint=best" in " ".join(stderr.split())


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="holds no checkpoint"):
        load(tmp_path)


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("out", "settings"),
    [("predictions.csv", []), ("predictions.jsonl", []), ("predictions.jsonl", ["algo.transductive_steps=3"])],
)
def test_metarun_predict_writes_a_label_and_every_probability_for_each_input(tmp_path, out, settings):
    folder = trained(tmp_path / "run", "algo=protonet", *settings)
    (support_x, support_y), (query_x, _) = examples(folder, 3, [4, 1, 2])
    support = write_rows(tmp_path / "support.csv", [{"text": t, "label": y} for t, y in zip(support_x, support_y)])
    inputs = write_rows(tmp_path / "inputs.jsonl", [{"text": t} for t in query_x])
    result = command("metarun-predict", f"run={folder}", f"support={support}", f"inputs={inputs}", f"out={out}",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    adapted = load(folder).adapt(support_x, support_y, unlabelled=query_x)  # read only by a transductive run
    expected = adapted.predict(query_x)
    labels = sorted(set(support_y))
    if out.endswith(".csv"):
        with open(tmp_path / out, newline="") as file:
            rows = list(csv.DictReader(file))
        assert list(rows[0]) == ["text", "label", *(f"p({label})" for label in labels)]
        probabilities = [[float(r[f"p({label})"]) for label in labels] for r in rows]
    else:
        rows = [json.loads(line) for line in (tmp_path / out).read_text().splitlines()]
        probabilities = [[r["probabilities"][label] for label in labels] for r in rows]
    assert [r["text"] for r in rows] == query_x and [r["label"] for r in rows] == expected
    torch.testing.assert_close(torch.tensor(probabilities), adapted.predict_proba(query_x), atol=1e-6, rtol=0)
    inductive = load(folder).adapt(support_x, support_y).predict_proba(query_x)
    assert torch.allclose(torch.tensor(probabilities), inductive, atol=1e-6) != bool(settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", "support.csv", "inputs.jsonl", out])


def test_metarun_predict_over_a_large_file_shows_progress_with_rate_and_eta_in_a_log(tmp_path, monkeypatch, run_cli):
    from metarun.predict import SHOW_PROGRESS_FROM

    folder = trained(tmp_path / "run", "algo=protonet")
    (support_x, support_y), (query_x, _) = examples(folder, 3, [2, 2, 2])
    support = write_rows(tmp_path / "support.csv", [{"text": t, "label": y} for t, y in zip(support_x, support_y)])
    many = [query_x[i % len(query_x)] for i in range(SHOW_PROGRESS_FROM)]
    inputs = write_rows(tmp_path / "inputs.jsonl", [{"text": t} for t in many])
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli(cli.predict_main, f"run={folder}", f"support={support}", f"inputs={inputs}",
                                   "out=p.csv")  # fmt: skip
    assert code == 0, stderr
    lines = [line for line in stdout.splitlines() if line.startswith("predict ")]
    assert lines[-1].startswith(f"predict {len(many)}/{len(many)} (100%) | ") and " | eta " in lines[-1]
    assert re.search(r" \| [0-9.]+/s \| ", lines[-1])


def test_metarun_predict_refuses_an_unknown_output_format(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(cli.predict_main, "run=x", "support=s.csv", "inputs=i.csv", "out=p.xlsx")
    assert code == 2 and "out='p.xlsx' is not valid" in " ".join(stderr.split())


def test_load_refuses_an_unknown_precision(tmp_path):
    folder = trained(tmp_path / "run", "algo=protonet")
    with pytest.raises(UserError, match="precision='fp16' is not valid; use one of: auto, fp32, bf16"):
        load(folder, precision="fp16")


def test_metarun_predict_names_the_setting_of_a_missing_file(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(cli.predict_main, "run=x", "support=nope.csv", "inputs=i.csv", "out=p.csv")
    message = " ".join(stderr.split())
    assert code == 2 and "not found: 'nope.csv'. Check support " in message, message


def test_labels_named_like_the_output_columns_stay_apart(tmp_path):
    folder = trained(tmp_path / "run", "algo=protonet")
    (support_x, _), (query_x, _) = examples(folder, 2, [2, 2])
    support = write_rows(
        tmp_path / "support.jsonl",
        [{"text": t, "label": y} for t, y in zip(support_x, ["text", "text", "label", "label"])],
    )
    inputs = write_rows(tmp_path / "inputs.jsonl", [{"text": t} for t in query_x])
    result = command("metarun-predict", f"run={folder}", f"support={support}", f"inputs={inputs}", "out=p.csv",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "p.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["text", "label", "p(label)", "p(text)"]
    assert [r["text"] for r in rows] == query_x and {r["label"] for r in rows} <= {"text", "label"}


def test_a_sweep_jobs_folder_and_the_device_are_taken_as_typed(tmp_path):
    """A multirun job's folder has `=` and `,` in its name, which Hydra's grammar reads as a sweep unless quoted;
    `device=cpu` picks the device group, as for metarun."""
    folder = trained(tmp_path / "0_algo=protonet,seed=0", "algo=protonet")
    (support_x, support_y), (query_x, _) = examples(folder, 2, [2, 2])
    rows = [{"text": t, "label": y} for t, y in zip(support_x, support_y)]
    support = write_rows(tmp_path / "support, labelled=yes.jsonl", rows)
    inputs = write_rows(tmp_path / "inputs.jsonl", [{"text": t} for t in query_x])
    predicted = command("metarun-predict", f"run={folder}", f"support={support}", f"inputs={inputs}",
                        f"out={tmp_path / 'p=1.jsonl'}", "device=cpu")  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len((tmp_path / "p=1.jsonl").read_text().splitlines()) == len(query_x)
    in_bf16 = command("metarun-predict", f"run={folder}", f"support={support}", f"inputs={inputs}",
                      f"out={tmp_path / 'bf16.jsonl'}", "device=cpu", "device.precision=bf16",
                      "device.threads=1")  # fmt: skip
    assert in_bf16.returncode == 0, in_bf16.stderr[-2000:]
    probabilities = [[json.loads(line)["probabilities"] for line in (tmp_path / f).read_text().splitlines()]
                     for f in ("p=1.jsonl", "bf16.jsonl")]  # fmt: skip
    assert probabilities[0] != probabilities[1]  # the precision asked for is the one used
    scored = command("metarun-eval", f"run={folder}", "device=cpu", f"hydra.run.dir={tmp_path / 'eval'}")
    assert scored.returncode == 0, scored.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["run"] == str(folder) and metrics["device"] == "cpu"
    assert metrics["test_acc"] == json.loads((folder / "metrics.json").read_text())["test_acc"]

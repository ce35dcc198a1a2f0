"""Evaluation: features computed once per text give the same scores as running the encoder per episode; accuracy,
balanced accuracy and macro-F1 as counted by hand; fixed tasks report all three, and metrics.json says what ran."""

import json
import statistics
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import metarun
from conftest import compose_config, random_episode, tiny_model
from metarun.algorithms import MAML, ProtoNet, SupervisedBaseline
from metarun.errors import UserError
from metarun.evaluation import episode_scores, evaluate, predict
from metarun.objectives import classification_scores
from metarun.stats import EvalResult, mean_with_ci, summarize
from metarun.results import provenance
from metarun.run import run

ALGORITHMS = {
    "protonet": lambda m: ProtoNet(m),
    "prototypes": lambda m: ProtoNet(m, distance="cosine", meta_train=False),
    "transductive_prototypes": lambda m: ProtoNet(m, distance="cosine", meta_train=False, transductive_steps=2),
    "anil": lambda m: MAML(m, inner_scope="head", head_init="zero", inner_lr=0.5, eval_inner_steps=5),
    "proto_anil": lambda m: MAML(m, inner_scope="head", head_init="prototypes", inner_lr=0.1, eval_inner_steps=3),
    "finetune_head": lambda m: SupervisedBaseline(m, inner_scope="head", inner_optimizer="adam", eval_inner_steps=5),
}


def forward_calls(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_cached_features_score_as_the_encoder_does(name):
    model = tiny_model(n_classes=3)
    algorithm = ALGORITHMS[name](model)
    episodes = [random_episode(seed=s) for s in range(6)]
    params = dict(model.named_parameters())
    calls = forward_calls(model)
    torch.manual_seed(0)
    cached = evaluate(algorithm, params, episodes, torch.device("cpu"))
    assert len(calls) == 1  # every text's features in one batch, whatever the number of episodes
    torch.manual_seed(0)
    per_episode = [evaluate(algorithm, params, [e], torch.device("cpu")).mean for e in episodes]
    assert len(calls) > len(episodes)  # a single episode runs the encoder itself
    assert cached.mean == pytest.approx(sum(per_episode) / len(episodes), abs=1e-12)
    before = len(calls)
    algorithm.logits(params, episodes[0].query_x)
    assert len(calls) == before + 1  # the table lived only inside the evaluation: the algorithm runs its encoder


@pytest.mark.parametrize("inner_scope", ["all", "top"])
def test_adapting_the_encoder_runs_it_for_every_episode(inner_scope):
    model = tiny_model(n_classes=3)
    algorithm = MAML(model, inner_scope=inner_scope, top_layers=1, eval_inner_steps=2)
    calls = forward_calls(model)
    evaluate(algorithm, dict(model.named_parameters()), [random_episode(seed=s) for s in range(3)], torch.device("cpu"))
    table = inner_scope == "top"  # the layer below the top one: computed once for every text, in one batch
    assert len(calls) == table + 3 * (2 + 1)  # two support steps and the query, per episode


def test_scores_match_a_hand_counted_confusion_matrix():
    """An imbalanced test set of 5 possible labels: 0 is the majority, 2 is present but never predicted, 3 is
    predicted but never present, 4 is neither (left out of every mean)."""
    target = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 0, 0, 0, 0, 1, 3, 0, 1, 1, 0])
    # rows true, columns predicted, counted by hand:
    #        p0 p1 p2 p3 p4
    # t0  [   5, 1, 0, 1, 0 ]
    # t1  [   1, 2, 0, 0, 0 ]
    # t2  [   1, 0, 0, 0, 0 ]
    recall = [Fraction(5, 7), Fraction(2, 3), Fraction(0, 1)]  # classes present in the test set: 0, 1, 2
    f1 = [  # 2TP / (2TP + FP + FN) for classes present or predicted: 0, 1, 2, 3
        Fraction(2 * 5, 2 * 5 + 2 + 2),
        Fraction(2 * 2, 2 * 2 + 1 + 1),
        Fraction(0, 0 + 0 + 1),  # present, never predicted
        Fraction(0, 0 + 1 + 0),  # predicted, never present
    ]
    scores = classification_scores(predicted, target, n_classes=5)
    assert scores.accuracy == pytest.approx(7 / 11, abs=1e-12)
    assert scores.balanced_accuracy == pytest.approx(float(sum(recall) / 3), abs=1e-12)
    assert scores.macro_f1 == pytest.approx(float(sum(f1) / 4), abs=1e-12)
    assert scores.recall == pytest.approx((*map(float, recall), None, None))  # 3 and 4 are absent: no recall
    inferred = classification_scores(predicted, target)  # the classes seen (0 to 3) are enough to count them
    assert (inferred.accuracy, inferred.balanced_accuracy, inferred.macro_f1) == (
        scores.accuracy, scores.balanced_accuracy, scores.macro_f1,
    ) and inferred.recall == scores.recall[:4]  # fmt: skip


def naive_scores(predicted: list[int], target: list[int]) -> tuple[float, float, float]:
    """Per class, from the label lists alone."""
    recalls, f1s = [], []
    for c in sorted(set(target) | set(predicted)):
        tp = sum(p == c and t == c for p, t in zip(predicted, target))
        fp = sum(p == c and t != c for p, t in zip(predicted, target))
        fn = sum(p != c and t == c for p, t in zip(predicted, target))
        if tp + fn:
            recalls.append(tp / (tp + fn))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    accuracy = sum(p == t for p, t in zip(predicted, target)) / len(target)
    return accuracy, sum(recalls) / len(recalls), sum(f1s) / len(f1s)


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_a_per_class_count_on_random_labels(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05]), 40, replacement=True, generator=g)
    predicted = torch.randint(0, 5, (40,), generator=g)
    scores = classification_scores(predicted, target, n_classes=5)
    expected = naive_scores(predicted.tolist(), target.tolist())
    assert (scores.accuracy, scores.balanced_accuracy, scores.macro_f1) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_majority_class_guesser_scores_one_over_c_balanced(n_classes):
    target = torch.tensor([0] * 30 + [c for c in range(1, n_classes) for _ in range(2)])  # 0 is 75-94 %
    scores = classification_scores(torch.zeros_like(target), target, n_classes)
    assert scores.accuracy == 30 / len(target) and scores.accuracy > 0.7
    assert scores.balanced_accuracy == pytest.approx(1 / n_classes, abs=1e-12)
    majority_f1 = 2 * 30 / (2 * 30 + len(target) - 30)
    assert scores.macro_f1 == pytest.approx(majority_f1 / n_classes, abs=1e-12)


def test_evaluate_is_the_mean_accuracy_of_the_episode_predictions():
    model = tiny_model(n_classes=3)
    algorithm = MAML(model, inner_scope="head", head_init="zero", inner_lr=0.5, eval_inner_steps=5)
    episodes = [random_episode(seed=s, n_query=4) for s in range(4)]
    params = dict(model.named_parameters())
    predictions = predict(algorithm, params, episodes, torch.device("cpu"), query_batch=5)  # batches split queries
    assert [len(p) for p in predictions] == [12] * 4
    accuracies = [(p == e.query_y).double().mean().item() for p, e in zip(predictions, episodes)]
    result = evaluate(algorithm, params, iter(episodes), torch.device("cpu"), query_batch=5)  # any iterable
    assert result.episodes == 4 and result.mean == pytest.approx(sum(accuracies) / 4, abs=1e-12)
    scores = episode_scores(algorithm, params, episodes, torch.device("cpu"))
    assert [s.accuracy for s in scores] == pytest.approx(accuracies, abs=1e-12)
    assert str(result) == f"{100 * result.mean:.2f} ± {100 * result.ci95:.2f}"


def test_a_single_task_has_no_interval_and_prints_none():
    summary = summarize([classification_scores(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))])
    for result in summary.values():
        assert result.episodes == 1 and result.interval is None
        assert "nan" not in str(result) and "±" not in str(result)
    assert str(summary["accuracy"]) == "66.67"
    assert EvalResult(0.5, 0.1, 2).interval == 0.1


LABELS = ("_00", "_01", "_02", "_03", "_04")


def imbalanced_tasks(folder: Path, domains: tuple[str, ...]) -> str:
    """Each domain's labels _00.._04: 2 train rows each; a test file of all 10 left of _00 and 2 of the others
    (56 % one class)."""
    from metarun.data import generate_synthetic

    corpus = generate_synthetic(examples_per_class=12)
    specs = []
    for domain in domains:
        rows = [i for i, d in enumerate(corpus.domains) if d == domain and corpus.labels[i].endswith(LABELS)]
        files = {}
        for part in ("train", "test"):
            seen, lines = {}, []
            for i in rows:
                label = corpus.labels[i]
                k = seen[label] = seen.get(label, -1) + 1
                if (k < 2) if part == "train" else (k >= 2 and (label.endswith("_00") or k < 4)):
                    lines.append(json.dumps({"text": corpus.texts[i], "label": label}))
            files[part] = folder / f"{domain}.{part}.jsonl"
            files[part].write_text("\n".join(lines) + "\n")
        specs.append(f"{{name:{domain},train:'{files['train']}',test:'{files['test']}'}}")
    return f"task.eval_tasks=[{','.join(specs)}]"


NEW_KEYS = ("test_balanced_acc", "test_balanced_acc_ci95", "test_macro_f1", "test_macro_f1_ci95",
            "per_task_balanced_acc", "per_task_macro_f1")  # fmt: skip


@pytest.mark.parametrize("domains", [("domain_08", "domain_09"), ("domain_09",)])
def test_fixed_tasks_report_balanced_accuracy_and_macro_f1(tmp_path, capsys, domains):
    cfg = compose_config("task=fixed_tasks", imbalanced_tasks(tmp_path, domains), "data.examples_per_class=12")
    run(cfg, tmp_path / "run")
    text = (tmp_path / "run" / "metrics.json").read_text()
    metrics = json.loads(text)
    assert "NaN" not in text and "Infinity" not in text
    assert sorted(metrics["per_task_balanced_acc"]) == sorted(metrics["per_task_macro_f1"]) == sorted(domains)
    for name in domains:
        acc = metrics["per_task_acc"][name]
        assert acc * 18 == round(acc * 18)  # scored on all 18 test rows (10 + 4 x 2)
        assert 0 <= metrics["per_task_balanced_acc"][name] <= 1 and 0 <= metrics["per_task_macro_f1"][name] <= 1
        recall = metrics["per_task_recall"][name]  # by label name: the mean of those present is balanced accuracy
        assert sorted(label[-3:] for label in recall) == sorted(LABELS)  # the task's five labels, by name
        assert sum(recall.values()) / len(recall) == pytest.approx(metrics["per_task_balanced_acc"][name], abs=1e-12)
    n = len(domains)
    assert metrics["test_episodes"] == n
    for key, per_task in (("test_acc", "per_task_acc"), ("test_balanced_acc", "per_task_balanced_acc"),
                          ("test_macro_f1", "per_task_macro_f1")):  # fmt: skip
        assert metrics[key] == pytest.approx(sum(metrics[per_task].values()) / n, abs=1e-12)
    for key in ("test_ci95", "test_balanced_acc_ci95", "test_macro_f1_ci95"):
        assert (metrics[key] is None) == (n == 1) and metrics["val_ci95"] is None  # one val episode: no interval
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    for header in ("accuracy %", "balanced acc.", "macro-F1 %"):
        assert header in out
    assert f"{100 * metrics['test_balanced_acc']:.2f}" in out and f"{100 * metrics['test_macro_f1']:.2f}" in out


def test_a_fixed_task_with_more_labels_than_meta_trainings_n_way_adapts_to_all_of_them(tmp_path):
    """A full label set: 3-way meta-training episodes, then one 5-label task, scored as nearest cosine prototypes
    computed here from the run's own encoder."""
    from metarun import load
    from metarun.data import load_local

    tasks = imbalanced_tasks(tmp_path, ("domain_09",))
    run(compose_config("task=fixed_tasks", tasks, "task.n_way=3", "algo=prototypes"), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model = load(tmp_path / "run", device="cpu")
    support, test = (load_local(str(tmp_path / f"domain_09.{part}.jsonl")) for part in ("train", "test"))
    with torch.no_grad():
        embed = lambda texts: model.algorithm.model.eval()(model.encode(texts), features_only=True)  # noqa: E731
        names = sorted(set(support.labels))
        centres = torch.stack([embed([t for t, y in zip(support.texts, support.labels) if y == n]).mean(0)
                               for n in names])  # fmt: skip
        scores = (
            torch.nn.functional.normalize(embed(test.texts), dim=-1) @ torch.nn.functional.normalize(centres, dim=-1).T
        )
    by_hand = sum(names[i] == y for i, y in zip(scores.argmax(-1).tolist(), test.labels)) / len(test.labels)
    assert len(metrics["per_task_recall"]["domain_09"]) == 5 and metrics["per_task_acc"]["domain_09"] == by_hand
    with pytest.raises(UserError, match="its train file has 5 labels .* but task.n_way=3 and algo.head_init=learned"):
        run(
            compose_config("task=fixed_tasks", tasks, "task.n_way=3", "algo=maml", "algo.head_init=learned"),
            tmp_path / "learned",
        )


def test_sampled_episodes_keep_accuracy_only(tmp_path, capsys):
    run(compose_config("task=domain_adapt"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all(metrics[key] is None for key in NEW_KEYS) and metrics["per_task_acc"] == {}
    assert metrics["test_episodes"] == 3 and metrics["test_ci95"] > 0
    table = capsys.readouterr().out.split("accuracy % (95% CI)", 1)[1]  # the results table, after the config tree
    assert "balanced" not in table and "macro-F1" not in table and "nan" not in table


def test_metrics_say_which_code_torch_and_device_produced_them(tmp_path):
    run(compose_config(), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metarun_version"] == metarun.__version__ and metrics["torch_version"] == torch.__version__
    assert metrics["device"] == "cpu"
    checkout = Path(metarun.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        assert metrics["git_commit"] is None
    else:
        assert metrics["git_commit"] in (head.stdout.strip(), head.stdout.strip() + "-dirty")
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        assert metrics["git_commit"].endswith("-dirty") == bool(dirty)


def test_no_commit_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert provenance(torch.device("cpu")) == {
        "metarun_version": metarun.__version__, "git_commit": None, "torch_version": torch.__version__,
        "device": "cpu",
    }  # fmt: skip


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_no_commit_for_an_installed_copy_inside_another_repository(tmp_path, monkeypatch):
    """A virtualenv inside some project's repository holds metarun, but that repository is not metarun's source."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "README").write_text("another project\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "README"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)  # fmt: skip
    (tmp_path / "metarun").mkdir()
    monkeypatch.setattr(metarun, "__file__", str(tmp_path / "metarun" / "__init__.py"))
    assert provenance(torch.device("cpu"))["git_commit"] is None


def test_the_interval_over_a_few_tasks_is_students_t():
    scores = [0.55, 0.62, 0.71, 0.80]  # four fixed tasks
    result = mean_with_ci(scores)
    # t(0.975, 3 degrees of freedom) = 3.182 in printed tables; the normal's 1.960 would be 38% too narrow
    assert result.ci95 == pytest.approx(3.182 * statistics.stdev(scores) / 2, rel=2e-4)
    many = [0.5] * 599 + [1.0]  # 600 episodes: t(0.975, 599) = 1.964
    assert mean_with_ci(many).ci95 == pytest.approx(1.964 * statistics.stdev(many) / 600**0.5, rel=2e-4)


def test_a_best_validation_at_the_last_step_says_the_budget_may_be_the_limit(tmp_path, capsys):
    from omegaconf import OmegaConf

    from metarun.results import best_at_last_step

    cfg = OmegaConf.create({"train": {"outer_steps": 10}, "eval": {"val_interval": 5}})
    assert best_at_last_step(10, cfg) and not best_at_last_step(5, cfg) and not best_at_last_step(None, cfg)
    assert not best_at_last_step(10, OmegaConf.merge(cfg, {"eval": {"val_interval": 10}}))  # one validation only
    run(compose_config("train.outer_steps=4", "eval.val_interval=1", "algo=protonet"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    note = "The best validation came at the last outer step" in " ".join(capsys.readouterr().out.split())
    assert metrics["best_at_last_step"] == (metrics["best_step"] == 4) == note


DEV_DOMAINS = ("domain_08", "domain_09")
DEV_SETTINGS = ("task=fixed_tasks", "data.examples_per_class=12", "task.split.val=0", "task.split.test=0")


def tasks_with_dev_files(folder: Path, tasks: str) -> str:
    """`tasks` (of `imbalanced_tasks` over DEV_DOMAINS) with dev files that copy their test files, so validation and
    test score alike."""
    with_dev = tasks.replace(",test:'", ",dev:'{dev}',test:'")
    for domain in DEV_DOMAINS:
        (folder / f"{domain}.dev.jsonl").write_text((folder / f"{domain}.test.jsonl").read_text())
        with_dev = with_dev.replace("{dev}", str(folder / f"{domain}.dev.jsonl"), 1)
    return with_dev


def test_fixed_tasks_with_dev_files_stand_in_for_the_meta_val_and_meta_test_splits(tmp_path):
    tasks, settings = imbalanced_tasks(tmp_path, DEV_DOMAINS), DEV_SETTINGS
    run(compose_config(*settings, tasks_with_dev_files(tmp_path, tasks)), tmp_path / "run")
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    splits = json.loads((tmp_path / "run/splits.json").read_text())
    assert splits["val"] == splits["test"] == [] and len(splits["train"]) == 10  # every domain meta-trains
    assert metrics["val_episodes"] == metrics["test_episodes"] == 2  # validation scores the two dev files
    assert metrics["val_acc"] == pytest.approx(metrics["test_acc"], abs=1e-12)  # dev = test here, same weights
    with pytest.raises(UserError, match=r"task.split.val=0 leaves nothing to validate on"):
        run(compose_config(*settings, tasks), tmp_path / "no-dev")
    with pytest.raises(UserError, match=r"task.split.test=0 leaves no meta-test"):
        run(compose_config("task.split.test=0"), tmp_path / "no-tasks")


def test_select_by_keeps_the_step_with_the_best_validation_balanced_accuracy(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tasks = tasks_with_dev_files(tmp_path, imbalanced_tasks(tmp_path, DEV_DOMAINS))
    steps = ("train.outer_steps=6", "eval.val_interval=1", "algo=maml", "algo.head_init=learned", "seed=6")
    found = {}
    for metric in ("accuracy", "balanced_accuracy"):
        run(compose_config(*DEV_SETTINGS, tasks, *steps, f"eval.select_by={metric}"), tmp_path / metric)
        events = EventAccumulator(str(tmp_path / metric / "tensorboard"))
        events.Reload()
        logged = {tag: [e.value for e in events.Scalars(tag)] for tag in ("val/acc", "val/balanced_acc")}
        found[metric] = json.loads((tmp_path / metric / "metrics.json").read_text()), logged
    metrics, logged = found["balanced_accuracy"]
    assert logged == found["accuracy"][1]  # the same training; only the kept step differs
    first_best = {tag: 1 + max(range(6), key=lambda i: values[i]) for tag, values in logged.items()}
    assert first_best["val/acc"] != first_best["val/balanced_acc"]  # seed 6: the two scores disagree
    assert found["accuracy"][0]["best_step"] == first_best["val/acc"]
    assert metrics["best_step"] == first_best["val/balanced_acc"] and metrics["select_by"] == "balanced_accuracy"
    assert metrics["val_balanced_acc"] == pytest.approx(max(logged["val/balanced_acc"])) and "val_acc" not in metrics
    # the weights tested are the kept step's: the dev files are the test files here
    assert metrics["test_balanced_acc"] == pytest.approx(metrics["val_balanced_acc"], abs=1e-12)
    assert metrics["test_acc"] == pytest.approx(logged["val/acc"][metrics["best_step"] - 1], abs=1e-6)


def test_eval_shots_draw_one_fixed_support_per_task_for_every_run(tmp_path):
    from metarun.data import Corpus
    from metarun.tasks.fixed import support_draw

    corpus = Corpus([f"review {i}" for i in range(12)], ["neg"] * 4 + ["pos"] * 8)
    drawn = support_draw(corpus, 3, "0:books.t2", "books.t2.train.jsonl")
    assert sorted(drawn.labels) == ["neg"] * 3 + ["pos"] * 3 and set(drawn.texts) <= set(corpus.texts)
    assert support_draw(corpus, 3, "0:books.t2", "books.t2.train.jsonl").texts == drawn.texts  # every run alike
    assert any(support_draw(corpus, 3, f"{seed}:books.t2", "f").texts != drawn.texts for seed in range(1, 6))
    with pytest.raises(UserError, match=r"task.eval_shots=5 needs 5 examples .* 'neg' has 4"):
        support_draw(corpus, 5, "0:books.t2", "books.t2.train.jsonl")
    tasks = imbalanced_tasks(tmp_path, ("domain_09",))  # 2 train rows per label: one drawn of each
    run(compose_config("task=fixed_tasks", tasks, "data.examples_per_class=12", "task.eval_shots=1"), tmp_path / "r")
    assert json.loads((tmp_path / "r/metrics.json").read_text())["test_episodes"] == 1

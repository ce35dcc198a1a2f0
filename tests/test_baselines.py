"""The practitioner's baselines (metarun.baselines) against computations written out here: TF-IDF by its formula,
logistic regression by minimising its objective with torch, and the majority class by counting."""

import json
import math
import re
from collections import Counter

import pytest
import torch

from metarun.baselines import fit_features_lr, fit_tfidf_lr, majority, score_baselines
from metarun.config import compose
from metarun.parts import build_task

pytest.importorskip("sklearn")

TEXTS = [
    "great product works great", "love it great value", "works as described love", "great great buy again",
    "terrible broke after a day", "awful waste of money", "broke quickly awful", "terrible value do not buy",
    "love the value", "broke and awful",
]  # fmt: skip
LABELS = ["1", "1", "1", "1", "-1", "-1", "-1", "-1", "1", "-1"]


def tfidf_by_hand(train: list[str], texts: list[str]) -> torch.Tensor:
    """sklearn's TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True) from its documented formula."""

    def grams(text: str) -> list[str]:
        words = re.findall(r"\b\w\w+\b", text.lower())
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    df = Counter(g for text in train for g in set(grams(text)))
    vocabulary = sorted(g for g, n in df.items() if n >= 2)
    idf = torch.tensor([math.log((1 + len(train)) / (1 + df[g])) + 1 for g in vocabulary], dtype=torch.float64)
    rows = []
    for text in texts:
        counts = Counter(grams(text))
        tf = torch.tensor([1 + math.log(counts[g]) if counts[g] else 0.0 for g in vocabulary], dtype=torch.float64)
        row = tf * idf
        rows.append(row / row.norm() if row.norm() > 0 else row)
    return torch.stack(rows)


def logistic_decision_by_hand(x: torch.Tensor, positive: torch.Tensor, c: float = 1.0):
    """argmin 0.5 |w|^2 + C sum log(1 + exp(-y (w.x + b))) (the intercept unpenalised): the decision function."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    sign = positive.double() * 2 - 1
    optimizer = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def objective():
        optimizer.zero_grad()
        loss = 0.5 * w @ w + c * torch.nn.functional.softplus(-sign * (x @ w + b)).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return lambda rows: (rows @ w + b).detach()


def test_tfidf_lr_decides_as_tfidf_and_logistic_regression_written_out():
    queries = ["great value love it", "awful broke terrible", "buy again", "do not buy broke"]
    model = fit_tfidf_lr(TEXTS, LABELS)
    assert list(model.classes_) == ["-1", "1"]  # the decision function is the score of "1"
    decide = logistic_decision_by_hand(tfidf_by_hand(TEXTS, TEXTS), torch.tensor([label == "1" for label in LABELS]))
    expected = decide(tfidf_by_hand(TEXTS, queries))
    # sklearn's solver stops at its tol=1e-4, so agreement is to about 1e-3 (an unsmoothed idf misses by 1e-2)
    assert torch.allclose(torch.tensor(model.decision_function(queries)), expected, atol=2e-3)
    assert list(model.predict(queries)) == ["1" if v > 0 else "-1" for v in expected]
    assert expected.abs().min() > 1e-3  # no query sits on the boundary, where rounding could flip it


def test_features_lr_decides_as_logistic_regression_written_out():
    torch.manual_seed(0)
    features = torch.randn(40, 5, dtype=torch.float64)
    labels = ["b" if f[0] + 0.5 * f[1] + 0.3 * torch.randn(()) > 0 else "a" for f in features]
    queries = torch.randn(12, 5, dtype=torch.float64)
    model = fit_features_lr(features, labels, c=0.5)
    expected = logistic_decision_by_hand(features, torch.tensor([label == "b" for label in labels]), c=0.5)(queries)
    assert torch.allclose(torch.tensor(model.decision_function(queries.numpy())), expected, atol=2e-3)


def test_majority_is_the_most_frequent_label_and_ties_go_to_the_first_name():
    assert majority(["1", "-1", "1"]) == ["1"] * 3
    assert majority(["b", "a"]) == ["a", "a"]


def test_baselines_score_the_fixed_tasks_of_a_config_from_its_files(tmp_path):
    def write(name: str, rows: list[tuple[str, str]]) -> str:
        path = tmp_path / name
        lines = [json.dumps({"text": t, "label": y, "domain": name.split(".")[0]}) for t, y in rows]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    source = [write(f"src{d}.train.jsonl", list(zip(TEXTS, LABELS)) * 2) for d in range(3)]
    rows = list(zip(TEXTS, LABELS))
    target = {"train": write("target.train.jsonl", rows), "test": write("target.test.jsonl", rows[:7])}
    task = f"{{name: target, train: '{target['train']}', test: '{target['test']}'}}"
    cfg = compose("config", ["task=fixed_tasks", "data=local", f"data.files=[{','.join(source)}]",
                             "data.domain_column=domain", "task.n_way=2", "task.k_shot=2", "task.n_query=2",
                             "task.split.val=1", "task.split.test=1", f"task.eval_tasks=[{task}]",
                             "task.eval_shots=2"])  # fmt: skip
    results = score_baselines(cfg, ("majority", "tfidf_lr"))
    ((name, found),) = results["majority"].per_task
    assert name == "target" and found.accuracy == pytest.approx(4 / 7) and found.balanced_accuracy == 0.5
    ((_, tfidf),) = results["tfidf_lr"].per_task
    support = build_task(cfg).tasks()[0].support  # 2 reviews per label, drawn once (tested in test_evaluation)
    assert len(support) == 4
    model = fit_tfidf_lr(TEXTS * 2 + support.texts, LABELS * 2 + support.labels)  # one meta-training domain + support
    test_texts, test_labels = TEXTS[:7], LABELS[:7]
    expected = sum(p == y for p, y in zip(model.predict(test_texts), test_labels)) / 7
    assert tfidf.accuracy == pytest.approx(expected)

"""Out-of-scope abstention: the threshold chosen on validation rows against a brute-force search, the open-set
scores against a count by hand, and metarun-predict and the Python API abstaining where the probability is low."""

import csv
import random

import pytest
import torch

from metarun import cli, load
from metarun.abstain import abstained, choose_threshold, open_set_scores
from metarun.errors import UserError
from test_use import examples, trained, write_rows

LABELS = ["a", "b", "c"]


def accuracy(probabilities, truth, threshold):
    """The mean of in-scope accuracy and out-of-scope recall when rows below `threshold` say oos, by plain Python."""
    right = {True: 0, False: 0}
    for row, t in zip(probabilities.tolist(), truth):
        top = max(range(len(row)), key=row.__getitem__)
        said = "oos" if row[top] < threshold else LABELS[top]
        right[t == "oos"] += said == t
    return right[True] / truth.count("oos") + right[False] / (len(truth) - truth.count("oos"))


@pytest.mark.parametrize("seed", range(5))
def test_the_chosen_threshold_is_the_lowest_of_the_best_by_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    probabilities = torch.softmax(3 * torch.randn(40, 3, generator=gen), -1)
    rng = random.Random(seed)
    truth = [rng.choice([*LABELS, "oos"]) for _ in range(40)]
    chosen = choose_threshold(probabilities, LABELS, truth, "oos")
    candidates = sorted({0.0, 1.0 + 1e-6, *probabilities.max(-1).values.tolist()})
    best = max(accuracy(probabilities, truth, t) for t in candidates)
    assert accuracy(probabilities, truth, chosen) == best
    lowest = min(t for t in candidates if accuracy(probabilities, truth, t) == best)
    assert abstained(probabilities, LABELS, chosen, "oos") == abstained(probabilities, LABELS, lowest, "oos")


def test_open_set_scores_count_as_by_hand():
    predicted = ["a", "oos", "b", "oos", "c", "a"]
    truth = ["a", "a", "oos", "oos", "c", "oos"]  # in scope: a, a, c (2 right); oos: 3 (1 caught); said oos: 2 (1 is)
    assert open_set_scores(predicted, truth, "oos") == {"in_scope_accuracy": 2 / 3, "oos_recall": 1 / 3,
                                                        "oos_precision": 1 / 2}  # fmt: skip


def test_a_validation_set_without_out_of_scope_rows_is_refused():
    with pytest.raises(UserError, match="but the validation rows have no rows labelled 'oos'"):
        choose_threshold(torch.full((2, 3), 1 / 3), LABELS, ["a", "b"], "oos")


def test_metarun_predict_and_the_api_abstain_below_the_threshold(tmp_path, monkeypatch, run_cli):
    folder = trained(tmp_path / "run", "algo=protonet")
    (support_x, support_y), (query_x, query_y) = examples(folder, 3, [2, 2, 2])
    adapted = load(folder).adapt(support_x, support_y)
    confidence = adapted.predict_proba(query_x).max(-1).values
    threshold = float(confidence.median())
    said = adapted.predict(query_x, oos_threshold=threshold)
    assert [s == "oos" for s in said] == (confidence < threshold).tolist() and "oos" in said
    assert adapted.predict(query_x) == [s for s in adapted.predict(query_x, oos_threshold=0.0)]
    support = write_rows(tmp_path / "support.csv", [{"text": t, "label": y} for t, y in zip(support_x, support_y)])
    inputs = write_rows(tmp_path / "inputs.jsonl", [{"text": t} for t in query_x])
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(cli.predict_main, f"run={folder}", f"support={support}", f"inputs={inputs}", "out=p.csv",
                         f"oos_threshold={threshold}")  # fmt: skip
    with open(tmp_path / "p.csv", newline="") as file:
        assert code == 0 and [row["label"] for row in csv.DictReader(file)] == said
    half = len(query_x) // 2  # validation: the first half as they are, the second half called out of scope
    validation = write_rows(tmp_path / "val.csv", [{"text": t, "label": y if i < half else "oos"}
                                                   for i, (t, y) in enumerate(zip(query_x, query_y))])  # fmt: skip
    code, stdout, _ = run_cli(cli.predict_main, f"run={folder}", f"support={support}", f"inputs={inputs}",
                              "out=q.csv", f"oos_validation={validation}")  # fmt: skip
    chosen = adapted.choose_oos_threshold(query_x, [y if i < half else "oos" for i, y in enumerate(query_y)])
    assert code == 0 and f"below a top probability of {chosen:.4f}, chosen on the {len(query_x)} rows" in stdout
    code, _, stderr = run_cli(cli.predict_main, f"run={folder}", f"support={support}", f"inputs={inputs}",
                              "out=r.csv", f"oos_validation={validation}", "oos_threshold=0.5")  # fmt: skip
    assert code == 2 and "oos_threshold and oos_validation both say" in " ".join(stderr.split())

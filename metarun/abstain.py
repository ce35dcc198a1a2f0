"""Out-of-scope abstention: an adapted model answers `oos_label` ("none of these") when its top probability is below
a threshold, given by the user or chosen on a validation file that holds out-of-scope queries."""

from __future__ import annotations

import math

import torch

from metarun.errors import UserError


def abstained(probabilities: torch.Tensor, labels: list[str], threshold: float, oos_label: str) -> list[str]:
    """Each row's most probable label, or `oos_label` where that probability is below `threshold`."""
    confidence, best = probabilities.max(-1)
    return [oos_label if c < threshold else labels[i] for c, i in zip(confidence.tolist(), best.tolist())]


def choose_threshold(probabilities: torch.Tensor, labels: list[str], truth: list[str], oos_label: str) -> float:
    """The threshold on the top probability that maximises, over validation rows whose `truth` mixes in-scope labels
    and `oos_label`, the mean of in-scope accuracy and out-of-scope recall (balanced: validation files hold far fewer
    out-of-scope rows than in-scope ones); of equally good thresholds, the lowest."""
    if oos_label not in truth or all(t == oos_label for t in truth):
        has = f"no rows labelled {oos_label!r}" if oos_label not in truth else f"only rows labelled {oos_label!r}"
        raise UserError(f"Choosing an out-of-scope threshold needs validation rows labelled {oos_label!r} and rows of "
                        f"the in-scope labels, but the validation rows have {has}.")  # fmt: skip
    confidence, best = probabilities.max(-1)
    is_oos = torch.tensor([t == oos_label for t in truth])
    kept_right = torch.tensor([labels[i] == t for i, t in zip(best.tolist(), truth)])  # right if not abstained on
    values = torch.unique(confidence)  # each distinct confidence, and one above them all: every way to cut
    thresholds = torch.cat([values, torch.nextafter(values[-1:], torch.full_like(values[-1:], math.inf))])
    abstain = confidence.unsqueeze(0) < thresholds.unsqueeze(1)  # [thresholds, rows]
    right = (abstain & is_oos).sum(1) / is_oos.sum() + (~abstain & kept_right).sum(1) / (~is_oos).sum()
    return float(thresholds[int(torch.argmax(right))])  # the first best: the lowest threshold


def open_set_scores(predicted: list[str], truth: list[str], oos_label: str) -> dict[str, float | None]:
    """In-scope accuracy (over the in-scope rows), out-of-scope recall and precision (None where undefined)."""
    in_scope = [(p, t) for p, t in zip(predicted, truth) if t != oos_label]
    said_oos = [t for p, t in zip(predicted, truth) if p == oos_label]
    oos = [p for p, t in zip(predicted, truth) if t == oos_label]
    return {
        "in_scope_accuracy": sum(p == t for p, t in in_scope) / len(in_scope) if in_scope else None,
        "oos_recall": sum(p == oos_label for p in oos) / len(oos) if oos else None,
        "oos_precision": sum(t == oos_label for t in said_oos) / len(said_oos) if said_oos else None,
    }

"""What a task asks of the model's outputs: the loss that adaptation and meta-training minimise, what a prediction
is, and the scores of a query set. A task family declares its objective (`TaskFamily.objective`): labels
(`Classification`, cross-entropy over an N-way head) or a rating (`Regression`, squared error of a one-output head)."""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from metarun.errors import UserError
from metarun.stats import Scores


def classification_scores(predicted: torch.Tensor, target: torch.Tensor, n_classes: int | None = None) -> Scores:
    """Accuracy, balanced accuracy and macro-F1 of `predicted` against `target` (labels in 0..n_classes-1).

    Balanced accuracy averages recall over the classes present in `target`, so a majority-class guesser scores
    1/C. Macro-F1 averages F1 = 2TP / (2TP + FP + FN) over the classes present or predicted: a present class never
    predicted counts 0, a class neither present nor predicted is left out."""
    # one confusion matrix in torch, not scikit-learn: it is no core dependency, and three calls per episode cost more
    predicted, target = predicted.detach().cpu().long().flatten(), target.detach().cpu().long().flatten()
    if len(predicted) != len(target) or len(target) == 0:
        raise ValueError(f"need as many predictions as labels, and some: got {len(predicted)} and {len(target)}")
    n = n_classes if n_classes is not None else int(max(predicted.max(), target.max())) + 1
    confusion = torch.bincount(target * n + predicted, minlength=n * n).reshape(n, n)  # rows true, columns predicted
    hits, present, chosen = confusion.diag().double(), confusion.sum(1).double(), confusion.sum(0).double()
    in_test, involved = present > 0, present + chosen > 0
    return Scores(
        accuracy=int(confusion.diag().sum()) / len(target),
        balanced_accuracy=float((hits[in_test] / present[in_test]).mean()),
        macro_f1=float((2 * hits[involved] / (present[involved] + chosen[involved])).mean()),
        recall=tuple(float(h / p) if p > 0 else None for h, p in zip(hits, present)),
    )


def ndcg(predicted: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """nDCG@k of the query ranked by `predicted` (highest first), with the true ratings as linear gains:
    DCG = sum over the top k of rating / log2(rank + 1), divided by the DCG of the best order."""
    discounts = 1 / torch.log2(torch.arange(2, min(k, len(target)) + 2, dtype=torch.float64))
    ranked = target.double()[torch.argsort(predicted, descending=True, stable=True)][: len(discounts)]
    best = target.double().sort(descending=True).values[: len(discounts)]
    return float((ranked * discounts).sum() / (best * discounts).sum())


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """The probability that a positive outscores a negative (ties count half): the ROC AUC; None without both."""
    pos, neg = scores[positive].double(), scores[~positive].double()
    if len(pos) == 0 or len(neg) == 0:
        return None
    wins = (pos.unsqueeze(1) > neg).double().sum() + 0.5 * (pos.unsqueeze(1) == neg).double().sum()
    return float(wins / (len(pos) * len(neg)))


def rating_scores(predicted: torch.Tensor, target: torch.Tensor, liked: float) -> Scores:
    """A user's query: MAE and RMSE of the predicted ratings, nDCG@3 and @5 of the order they give, and the binary
    view (liked: a rating of at least `liked`) as accuracy, balanced accuracy and macro-F1 of predicted >= `liked`,
    with the AUC of the predicted rating for it."""
    predicted, target = predicted.detach().cpu().double().flatten(), target.detach().cpu().double().flatten()
    if len(predicted) != len(target) or len(target) == 0:
        raise ValueError(f"need as many predictions as ratings, and some: got {len(predicted)} and {len(target)}")
    error = predicted - target
    likes = classification_scores((predicted >= liked).long(), (target >= liked).long(), 2)
    return Scores(
        accuracy=likes.accuracy, balanced_accuracy=likes.balanced_accuracy, macro_f1=likes.macro_f1,
        recall=likes.recall, mae=float(error.abs().mean()), rmse=math.sqrt(float((error**2).mean())),
        ndcg_3=ndcg(predicted, target, 3), ndcg_5=ndcg(predicted, target, 5), auc=auc(predicted, target >= liked),
    )  # fmt: skip


class Classification:  # plain classes, not dataclasses: Hydra would make a dataclass argument a config
    """Labels 0..N-1 scored by an N-way head's logits."""

    name = "classification"
    metrics = ("accuracy", "balanced_accuracy", "macro_f1")  # the scores it gives (names of stats.METRICS)
    shown = metrics  # those the results table shows (metrics.json holds them all)
    shared_head = False  # label l is another class in every episode: each task's head is its own
    scores_sampled_episodes = ("accuracy",)  # sampled episodes are balanced: their accuracy is their score

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def quick_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        """What meta-training's log shows beside the loss."""
        return (outputs.argmax(-1) == targets).float().mean().item()

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(-1)

    def pooled_targets(self, targets: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """An episode's targets over all its split's classes (supervised pre-training): label l is class_ids[l]."""
        return class_ids[targets]

    def scores(self, predicted: torch.Tensor, targets: torch.Tensor, n_way: int) -> Scores:
        return classification_scores(predicted, targets, n_way)


class Regression:
    """A number per example (a rating) predicted by a one-output head, with squared error as the loss; a rating of at
    least `liked` counts as liked in the binary scores."""

    name = "regression"
    metrics = ("mae", "rmse", "ndcg_3", "ndcg_5", "accuracy", "balanced_accuracy", "macro_f1", "auc")
    shown = ("mae", "rmse", "ndcg_3", "auc")  # a table that fits a terminal
    shared_head = True  # a rating means the same for every task: the head is meta-learned, each task starts from it
    scores_sampled_episodes = None  # every metric: a user's query is no balanced episode

    def __init__(self, liked: float = 4.0) -> None:
        self.liked = liked

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.squeeze(-1), targets.to(outputs.dtype))

    def quick_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        return None  # the loss is the mean squared error already

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.squeeze(-1)

    def pooled_targets(self, targets: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        return targets  # a rating means the same in every task

    def scores(self, predicted: torch.Tensor, targets: torch.Tensor, n_way: int) -> Scores:
        return rating_scores(predicted, targets, self.liked)


Objective = Classification | Regression


def check_select_by(objective: Objective, select_by: str) -> None:
    """Refuse an `eval.select_by` that this objective's scores do not include."""
    if select_by not in objective.metrics:
        raise UserError(
            f"eval.select_by={select_by} is not a score of this task family's {objective.name} (it gives "
            f"{', '.join(objective.metrics)}); pick best.pt by one of those."
        )

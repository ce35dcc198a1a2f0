"""Scores and their 95% intervals: Student's t, so that a handful of tasks or seeds gets an honest width."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    short: str  # its name in metrics.json keys and TensorBoard tags
    header: str  # as the results table shows it
    percent: bool = True  # a fraction in [0, 1], shown as a percentage
    higher_is_better: bool = True


# the scores averaged over episodes, tasks or users; a family's objective says which it gives (metarun.objectives)
METRICS = {
    "accuracy": Metric("acc", "accuracy"),
    "balanced_accuracy": Metric("balanced_acc", "balanced acc."),
    "macro_f1": Metric("macro_f1", "macro-F1"),
    "mae": Metric("mae", "MAE", percent=False, higher_is_better=False),
    "rmse": Metric("rmse", "RMSE", percent=False, higher_is_better=False),
    "ndcg_3": Metric("ndcg3", "nDCG@3"),
    "ndcg_5": Metric("ndcg5", "nDCG@5"),
    "auc": Metric("auc", "AUC"),
}

# t_{0.975, df} for df = 1..30: the 95% two-sided Student-t quantiles (scipy.stats.t.ppf(0.975, df), 9 digits).
# Written out, not computed: scipy is no dependency (tens of MB for one quantile), torch's StudentT has no icdf.
T_975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
    2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
    2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
    2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)  # fmt: skip
Z_975 = 1.959963984540054  # the standard normal's 0.975 quantile


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom: the table up to 30, above it the
    Cornish-Fisher expansion around the normal quantile (Abramowitz & Stegun 26.7.5; error under 1e-6 there)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least one degree of freedom, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (power + 1) for power, term in enumerate(terms))


def half_width_95(values: Sequence[float]) -> float:
    """Half the width of the 95% Student-t interval of the mean of `values`; nan with fewer than two."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return t_quantile_975(n - 1) * sd / math.sqrt(n)


@dataclass(frozen=True)
class EvalResult:
    mean: float  # mean score (accuracy unless said otherwise) over episodes, in [0, 1]
    ci95: float  # half-width of the 95% confidence interval of that mean; nan with fewer than two episodes
    episodes: int
    percent: bool = True  # shown as a percentage (a fraction), or as it is (an error in the target's units)

    @property
    def interval(self) -> float | None:
        """`ci95`, or None where there is no interval (a single episode): what metrics.json stores."""
        return self.ci95 if math.isfinite(self.ci95) else None

    def __str__(self) -> str:
        scale, digits = (100, 2) if self.percent else (1, 4)
        if self.interval is None:
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} ± {scale * self.ci95:.{digits}f}"

    def better_than(self, other: EvalResult, metric: str) -> bool:
        """Whether this score of `metric` beats `other` (a lower error, a higher accuracy)."""
        return self.mean > other.mean if METRICS[metric].higher_is_better else self.mean < other.mean


def mean_with_ci(values: list[float], percent: bool = True) -> EvalResult:
    """The mean of `values` (episodes or tasks) with its 95% Student-t interval: over a dozen tasks the normal
    quantile would be 10% too narrow; over 600 episodes the two agree to 0.2%."""
    return EvalResult(sum(values) / len(values), half_width_95(values), len(values), percent)


@dataclass(frozen=True)
class Scores:
    """One episode's (one fixed task's, one user's) query scores: labels' scores in [0, 1]; a rating's also its
    errors and ranking, and its labels are liked / not liked (`metarun.objectives.Regression`)."""

    accuracy: float
    balanced_accuracy: float  # mean recall over the classes present in the query set
    macro_f1: float  # mean F1 over the classes present in the query set or predicted for it
    recall: tuple[float | None, ...] = ()  # each class's recall, by label id; None for a class absent from the query
    mae: float | None = None  # None: not a rating
    rmse: float | None = None
    ndcg_3: float | None = None
    ndcg_5: float | None = None
    auc: float | None = None  # None also where the query is all liked or all not liked


def summarize(scores: list[Scores]) -> dict[str, EvalResult]:
    """Each metric's mean over episodes (or tasks, or users) with its 95% CI, by name (`METRICS`): the metrics the
    scores have, each over the scores that define it (an AUC needs both kinds of query)."""
    found = {}
    for metric, kind in METRICS.items():
        values = [getattr(s, metric) for s in scores if getattr(s, metric) is not None]
        if values:
            found[metric] = mean_with_ci(values, kind.percent)
    return found

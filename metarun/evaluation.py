"""Few-shot evaluation: adapt on each episode's support set, score its query set, report mean and 95% CI."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from metarun.algorithms import Algorithm, Params
from metarun.episodes import Episode

Z_95 = 1.959964  # two-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class EvalResult:
    mean: float  # mean accuracy over episodes, in [0, 1]
    ci95: float  # half-width of the 95% confidence interval of that mean
    episodes: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}"


def mean_with_ci(values: list[float]) -> EvalResult:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return EvalResult(mean, float("nan"), n)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return EvalResult(mean, Z_95 * std / math.sqrt(n), n)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """No dropout while adapting and scoring; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate(
    algorithm: Algorithm, params: Params, episodes: Iterable[Episode], device: torch.device, query_batch: int = 512
) -> EvalResult:
    episodes = [e.to(device) for e in episodes]
    accuracies = []
    reused = algorithm.adapts_head_only and len(episodes) > 1
    tokens = [x for e in episodes for x in (e.support_x, e.query_x)]
    with eval_mode(algorithm.model), algorithm.cached_features(params, tokens) if reused else contextlib.nullcontext():
        for episode in episodes:
            adapted = algorithm.adapt(params, episode.support_x, episode.support_y)
            correct = 0
            with torch.no_grad():
                for start in range(0, len(episode.query_y), query_batch):
                    logits = algorithm.logits(adapted, episode.query_x[start : start + query_batch])
                    correct += (logits.argmax(-1) == episode.query_y[start : start + query_batch]).sum().item()
            accuracies.append(correct / len(episode.query_y))
    return mean_with_ci(accuracies)

"""Few-shot evaluation: adapt on each episode's support set, score its query set, report mean and 95% CI.

Sampled episodes are balanced by construction, so accuracy is their score. A fixed evaluation task scores a whole
test file, often imbalanced, so it also gets balanced accuracy and macro-F1; a user's ratings get every score of
`objectives.rating_scores`. The algorithm's objective says what a prediction is and how it is scored."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch

from metarun.algorithms import Algorithm, Params
from metarun.algorithms.caching import cached
from metarun.algorithms.heads import head_of_size
from metarun.distributed import Ranks
from metarun.results import TestScores
from metarun.stats import EvalResult, Scores, summarize
from metarun.tasks import TestSet
from metarun.episodes import Episode

Advance = Callable[[int, int], None]  # told (done, total) after each episode scored: progress


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """No dropout while adapting and scoring; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def predict(algorithm: Algorithm, params: Params, episodes: list[Episode], device: torch.device, query_batch: int = 512,
            advance: Advance | None = None, keep_features: bool = False) -> list[torch.Tensor]:  # fmt: skip
    """Adapt on each episode's support set (a transductive algorithm also reads the query texts) and predict its query
    set, `query_batch` rows at a time: one tensor of predicted labels (on the CPU) per episode. Over several episodes,
    what adaptation leaves unchanged (the features, or the lower layers' hidden states) is computed once per text
    (`algorithms.caching.cached`; with `keep_features`, a table kept for later runs). `advance(done, total)` is told
    after each episode (progress)."""
    episodes = [e.to(device) for e in episodes]
    predictions = []
    with eval_mode(algorithm.model):
        if len(episodes) > 1:
            tokens = [x for e in episodes for x in (e.support_x, e.query_x)]
            algorithm = cached(algorithm, params, tokens, algorithm.adapted_names(), keep_features)
        for episode in episodes:  # a fixed task may have more labels than meta-training's n_way (a full label set)
            sized = head_of_size(params, episode.n_way, algorithm.learns_head)
            adapted = algorithm.adapt(sized, episode.support_x, episode.support_y, episode.query_x)
            with torch.no_grad():
                batches = [
                    algorithm.objective.predict(algorithm.logits(adapted, episode.query_x[start : start + query_batch]))
                    for start in range(0, len(episode.query_y), query_batch)
                ]
            predictions.append(torch.cat(batches).cpu())
            if advance is not None:
                advance(len(predictions), len(episodes))
    return predictions


def episode_scores(
    algorithm: Algorithm,
    params: Params,
    episodes: Iterable[Episode],
    device: torch.device,
    query_batch: int = 512,
    advance: Advance | None = None,
    keep_features: bool = False,
) -> list[Scores]:
    """Accuracy, balanced accuracy and macro-F1 of each episode's query set, in the episodes' order (under torchrun
    each process scores its share of the episodes, and every process gets all the scores)."""
    ranks = Ranks.current()
    share = ranks.share(list(episodes))
    predictions = predict(algorithm, params, share, device, query_batch, advance, keep_features) if share else []
    scored = [algorithm.objective.scores(p, e.query_y, e.n_way) for p, e in zip(predictions, share)]
    return ranks.gather(scored)


def evaluate_scores(
    algorithm: Algorithm,
    params: Params,
    episodes: Iterable[Episode],
    device: torch.device,
    query_batch: int = 512,
    advance: Advance | None = None,
    keep_features: bool = False,
) -> dict[str, EvalResult]:
    """Each metric's mean over `episodes` with its 95% CI, by name (`stats.METRICS`)."""
    return summarize(episode_scores(algorithm, params, episodes, device, query_batch, advance, keep_features))


def evaluate(
    algorithm: Algorithm, params: Params, episodes: Iterable[Episode], device: torch.device, query_batch: int = 512
) -> EvalResult:
    """Mean query accuracy over `episodes` with its 95% CI."""
    return evaluate_scores(algorithm, params, episodes, device, query_batch)["accuracy"]


def score_test(algorithm: Algorithm, params: Params, test: TestSet, device: torch.device, seed: int,
               advance: Advance | None = None) -> TestScores:  # fmt: skip
    """Adapt and score on a family's meta-test: accuracy over sampled episodes, or every metric of each fixed task
    (intervals over tasks). Adaptation's own random draws (a fresh head) come from `seed`, so every command that
    tests a run gets the same numbers."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if test.task_names is None:
            scores = evaluate_scores(algorithm, params, test.episodes, device, advance=advance, keep_features=True)
            shown = algorithm.objective.scores_sampled_episodes  # None: every metric
            return TestScores(scores["accuracy"], None if shown else scores)
        per_task = []
        for name, episode in zip(test.task_names, test.episodes):
            per_task.append((name, episode_scores(algorithm, params, [episode], device)[0]))
            if advance is not None:
                advance(len(per_task), len(test.episodes))
        return TestScores.of_tasks(per_task, test.label_names)

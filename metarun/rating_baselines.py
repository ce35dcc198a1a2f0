"""What a recommender engineer tries before meta-learning, scored on the same meta-test users and query items as a
`task=users` run with the same config: the global mean rating, the user's own support mean, the item's mean rating
in meta-training (popularity; new items fall back to the global mean), popularity plus the user's offset, and a
ridge regressor on the frozen encoder's item features plus the user's offset. (Fine-tuning a global model, then
the user's support, is `algo=finetune`: a run of its own.)"""

from __future__ import annotations

from collections import defaultdict

import torch
from omegaconf import DictConfig

from metarun.algorithms.caching import cached
from metarun.algorithms.scopes import above_pooling
from metarun.errors import UserError
from metarun.evaluation import eval_mode
from metarun.features import text_keys, unique_rows
from metarun.parts import build, build_algorithm, build_task
from metarun.stats import EvalResult, Scores, summarize
from metarun.tasks.users import UserTasks
from metarun.tokenizer import make_tokenizer

METHODS = ("global_mean", "user_mean", "popularity", "popularity_offset", "features_ridge_offset")
RIDGE_PENALTIES = (0.1, 1.0, 10.0, 100.0)  # the ridge's penalty is chosen among these on the meta-val users


def offset(predict, support_keys: list[bytes], support_y: torch.Tensor):
    """`predict` moved by the user's offset: their support mean less its prediction's mean on the support items."""
    shift = float(support_y.mean()) - float(predict(support_keys).mean())
    return lambda keys: predict(keys) + shift


def item_means(sampler) -> tuple[dict[bytes, float], float]:
    """Each meta-train item's mean rating (by its text's tokens), and the mean of all meta-train ratings."""
    keys = text_keys(sampler.tokens)
    sums, counts = defaultdict(float), defaultdict(int)
    for rated in sampler.ratings.values():
        for row, target in rated:
            sums[keys[row]] += target
            counts[keys[row]] += 1
    total = sum(sums.values()) / sum(counts.values())
    return {k: sums[k] / counts[k] for k in sums}, total


def fit_ridge(features: dict[bytes, torch.Tensor], sampler, mean: float, penalty: float) -> torch.Tensor:
    """Ridge regression of (rating - mean) on an item's features, over every meta-train rating (float64)."""
    keys = text_keys(sampler.tokens)
    x = torch.stack([features[keys[row]] for rated in sampler.ratings.values() for row, _ in rated]).double()
    y = torch.tensor([t - mean for rated in sampler.ratings.values() for _, t in rated], dtype=torch.float64)
    return torch.linalg.solve(x.T @ x + penalty * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)


def predictors(method: str, episode, means: dict[bytes, float], mean: float, ridge=None, features=None):
    """The method's rating of items (by key) for one user, given their support set."""
    support_keys = text_keys(episode.support_x)
    popularity = lambda keys: torch.tensor([means.get(k, mean) for k in keys])  # noqa: E731
    if method == "global_mean":
        return lambda keys: torch.full((len(keys),), mean)
    if method == "user_mean":
        return lambda keys: torch.full((len(keys),), float(episode.support_y.mean()))
    if method == "popularity":
        return popularity
    if method == "popularity_offset":
        return offset(popularity, support_keys, episode.support_y)
    regressed = lambda keys: mean + torch.stack([features[k] for k in keys]).double() @ ridge  # noqa: E731
    return offset(regressed, support_keys, episode.support_y)


def scores_of(method: str, episodes, objective, **fitted) -> list[Scores]:
    """The method's scores of each user's query, in the episodes' order."""
    found = []
    for episode in episodes:
        predicted = predictors(method, episode, **fitted)(text_keys(episode.query_x))
        found.append(objective.scores(predicted.float(), episode.query_y, 1))
    return found


def score_rating_baselines(cfg: DictConfig, methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, EvalResult]]:
    """Each method's scores over the meta-test users of `cfg` (intervals over users), by method."""
    per_user, _ = rating_baseline_scores(cfg, methods)
    return {method: summarize(scores) for method, scores in per_user.items()}


def rating_baseline_scores(cfg: DictConfig, methods: tuple[str, ...] = METHODS, test_ratings: str | None = None,
                           ) -> tuple[dict[str, list[Scores]], list]:  # fmt: skip
    """Each method's scores of every meta-test user of `cfg`, by method, and those users' tasks (in that order).
    With `test_ratings` (a ratings file of other users, as `metarun-eval run=... data.ratings=<file>` scores them)
    the meta-test is every user of that file instead; the baselines still learn from `cfg`'s meta-train users."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise UserError(f"Unknown baseline(s) {unknown}; choose from {', '.join(METHODS)}.")
    family = build_task(cfg)
    if not isinstance(family, UserTasks):
        raise UserError(f"The rating baselines score users (task=users, as experiment=movielens sets it); this "
                        f"config has task={cfg.choices.task}.")  # fmt: skip
    torch.manual_seed(cfg.seed)
    tokenizer = family.load(build(cfg.data), lambda texts: make_tokenizer(cfg.model, texts))
    train = family.train_sampler()
    val = family.validation_episodes(tokenizer, cfg.eval.val_episodes, cfg.eval.seed)
    test = family.test_set(tokenizer, cfg.eval.test_episodes, cfg.eval.seed + 1).episodes
    if test_ratings is not None:  # other users: every one of them, their items' texts from the same items file
        others = build_task(cfg)
        others.load_test(build(cfg.data, ratings=test_ratings), tokenizer, every_row=True)
        test = others.test_set(tokenizer, cfg.eval.test_episodes, cfg.eval.seed + 1).episodes
    means, mean = item_means(train)
    fitted = {"means": means, "mean": mean}
    if "features_ridge_offset" in methods:
        algorithm = build_algorithm(cfg, tokenizer, torch.device("cpu"), n_train_classes=1)
        batches = [train.tokens, *(x for e in val + test for x in (e.support_x, e.query_x))]
        params, above = dict(algorithm.model.named_parameters()), above_pooling(algorithm.model)
        with eval_mode(algorithm.model):  # the frozen encoder's pooled output (below any decision layer), cached
            table = cached(algorithm, params, batches, above, keep=True).cache
        rows = unique_rows(batches)
        features = {k: v.double() for k, v in zip(text_keys(rows), table(rows).unbind())}
        by_penalty = {p: fit_ridge(features, train, mean, p) for p in RIDGE_PENALTIES}

        def val_mae(penalty: float) -> float:
            fit = {"ridge": by_penalty[penalty], "features": features, **fitted}
            return summarize(scores_of("features_ridge_offset", val, family.objective, **fit))["mae"].mean

        best = min(by_penalty, key=val_mae)
        fitted.update(ridge=by_penalty[best], features=features)
    return {m: scores_of(m, test, family.objective, **fitted) for m in methods}, test

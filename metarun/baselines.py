"""Baselines a practitioner tries before meta-learning, on the fixed evaluation tasks (the ARSC protocol).

- `majority`: every text gets the most frequent label of the scored file, an oracle's constant guess: its
  accuracy is the label prior, its balanced accuracy 50%.
- `tfidf_lr`: TF-IDF of words and word pairs, then logistic regression trained on all meta-training data and
  the task's support set (scikit-learn, the `baselines` extra).
- `features_lr`: logistic regression on the frozen encoder's features (`model=...`), trained the same way.

The fitted models are scikit-learn's, so the tests check their decision values against an independent computation;
`score_baselines` runs them on a config's tasks and data as `metarun` reads them.
"""

from __future__ import annotations

from collections import Counter

import torch
from omegaconf import DictConfig

from metarun.errors import UserError
from metarun.objectives import classification_scores
from metarun.features import by_length
from metarun.parts import build, build_algorithm, build_task
from metarun.results import TestScores
from metarun.stats import Scores
from metarun.tasks import FixedTasks
from metarun.tokenizer import encode, make_tokenizer


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError(
            "The tfidf_lr and features_lr baselines need scikit-learn; install it with pip install -e '.[baselines]'."
        ) from None


def logistic_regression(c: float = 1.0):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000)


def fit_tfidf_lr(train_texts: list[str], train_labels: list[str], c: float = 1.0):
    """TF-IDF of words and word pairs seen at least twice (sublinear term frequency), then logistic regression."""
    _sklearn()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    return make_pipeline(tfidf, logistic_regression(c)).fit(train_texts, train_labels)


def fit_features_lr(train_features: torch.Tensor, train_labels: list[str], c: float = 1.0):
    """Logistic regression on frozen features."""
    _sklearn()
    return logistic_regression(c).fit(train_features.double().numpy(), train_labels)


def majority(scored_labels: list[str]) -> list[str]:
    """The scored file's most frequent label for every row (ties: the first label in sorted order)."""
    counts = Counter(scored_labels)
    top = min(counts, key=lambda label: (-counts[label], label))
    return [top] * len(scored_labels)


METHODS = ("majority", "tfidf_lr", "features_lr")


def frozen_encoder(cfg: DictConfig, train_texts: list[str]):
    """`encode(texts) -> [n, d]`: the features of `cfg.model` as built for a run (its tokenizer fit on `train_texts`
    where it is fit at all), on the CPU, without dropout."""
    torch.manual_seed(cfg.seed)
    tokenizer = make_tokenizer(cfg.model, train_texts)
    algorithm = build_algorithm(cfg, tokenizer, torch.device("cpu"), n_train_classes=cfg.task.n_way)
    params = dict(algorithm.model.named_parameters())
    algorithm.model.eval()
    return lambda texts: torch.stack(
        by_length(lambda batch: algorithm.logits(params, batch, features_only=True), encode(tokenizer, texts))
    )


def score_baselines(cfg: DictConfig, methods: tuple[str, ...] = METHODS) -> dict[str, TestScores]:
    """Each method's scores on `cfg.task.eval_tasks`, as a run's test scores (per task, and their means over tasks),
    trained on the config's meta-training data plus the task's support set; `features_lr` uses `cfg.model`."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise UserError(f"Unknown baseline(s) {unknown}; choose from {', '.join(METHODS)}.")
    family = build_task(cfg)
    if not isinstance(family, FixedTasks):
        raise UserError(
            "The baselines score fixed evaluation tasks (task=fixed_tasks with task.eval_tasks), as "
            f"experiment=arsc_dev sets them; this config has task={cfg.choices.task}."
        )
    corpus = build(cfg.data)
    rows = family.split(corpus)
    source_texts = [corpus.texts[i] for i in rows["train"]]
    source_labels = [corpus.labels[i] for i in rows["train"]]
    tasks = family.tasks()
    if "features_lr" in methods:  # every distinct text once
        texts = sorted({*source_texts, *(x for t in tasks for x in (*t.support.texts, *t.scored.texts))})
        table = dict(zip(texts, frozen_encoder(cfg, source_texts)(texts)))
        features = lambda batch: torch.stack([table[x] for x in batch])  # noqa: E731
    per_task: dict[str, list[tuple[str, Scores]]] = {m: [] for m in methods}
    for task in tasks:
        train_texts, train_labels = source_texts + task.support.texts, source_labels + task.support.labels
        for method in methods:
            if method == "majority":
                predicted = majority(task.scored.labels)
            elif method == "tfidf_lr":
                predicted = fit_tfidf_lr(train_texts, train_labels).predict(task.scored.texts)
            else:
                model = fit_features_lr(features(train_texts), train_labels)
                predicted = model.predict(features(task.scored.texts).double().numpy())
            found = classification_scores(task.ids(list(predicted)), task.ids(task.scored.labels), len(task.labels))
            per_task[method].append((task.name, found))
    return {m: TestScores.of_tasks(per_task[m], {t.name: t.labels for t in tasks}) for m in methods}

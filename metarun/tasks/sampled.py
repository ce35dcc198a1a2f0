"""Sampled episodes over split classes or domains: the data's classes (`task.split_by=class`, few-shot
classification) or domains (`domain`, domain adaptation) are divided into meta-train, meta-val and meta-test, and
every episode draws N classes and K + Q examples of each from one split (one domain at a time when split by domain)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from tokenizers import Tokenizer

from metarun.data import Corpus
from metarun.episodes import Episode, EpisodeSampler, MetaSplit, class_groups, split_keys, split_rows
from metarun.errors import UserError
from metarun.schema import schema, setting
from metarun.tasks.family import TaskFamily, TestSet, digest_rows, split_files
from metarun.tokenizer import encode


@dataclass
class SplitConfig:
    val: float = setting(0.15, least=0.0)  # a fraction of the classes (or domains), or a count; 0: dev files
    test: float = setting(0.25, least=0.0)  # 0: fixed evaluation tasks only (task=fixed_tasks)
    seed: int = 0


@schema("task", "sampled")
@dataclass
class SampledTaskConfig:
    _target_: str = "metarun.tasks.SampledEpisodes"
    split_by: str = setting("class", choices=("class", "domain"))
    split: SplitConfig = field(default_factory=SplitConfig)
    n_way: int = setting(5, least=2)
    k_shot: int = setting(1, least=1)
    n_query: int = setting(15, least=1)  # query examples per class
    # query examples per class in meta-training episodes (fewer is faster); null: n_query
    meta_train_query: Optional[int] = setting(None, least=1)
    # classes per meta-training episode for algorithms that build their head from each support set (protonet: more
    # ways in training than in testing help, Snell et al., 2017); null: n_way
    meta_train_way: Optional[int] = setting(None, least=2)
    drop_small_classes: bool = False  # true: leave out classes with fewer than k_shot + n_query examples
    # permuted: labels drawn anew for every episode | fixed: a class's label id is its label name's place among the
    # sorted names, in every episode (a label set that every domain shares, e.g. sentiment across products)
    labels: str = setting("permuted", choices=("permuted", "fixed"))
    # balanced: task.n_query queries of each class | natural: n_way * n_query queries drawn from the episode's classes
    # at their own frequencies in its domain (test files keep their label prior; so meta-training can learn it)
    query: str = setting("balanced", choices=("balanced", "natural"))


class SampledEpisodes(TaskFamily):
    schema: ClassVar[type] = SampledTaskConfig
    split_settings: ClassVar[tuple[str, ...]] = ("split_by", "split")

    @classmethod
    def settings_problems(cls, task) -> list[str]:
        problems = []
        if task.split.test == 0 and not cls.has_own_test(task):
            problems.append(
                "task.split.test=0 leaves no meta-test classes or domains; it is for fixed evaluation tasks, which are "
                "then the test (task=fixed_tasks task.eval_tasks=[...]). Give task.split.test a fraction or a count."
            )
        if task.split.val == 0 and not cls.has_own_validation(task):
            problems.append(
                "task.split.val=0 leaves nothing to validate on; it is for fixed evaluation tasks that each name a dev "
                "file (task=fixed_tasks task.eval_tasks=[{name: ..., train: ..., test: ..., dev: ...}]). Give "
                "task.split.val a fraction or a count."
            )
        return problems

    @classmethod
    def has_own_test(cls, task) -> bool:
        """Whether something other than the meta-test split is the test (an empty split is then allowed)."""
        return False

    @classmethod
    def has_own_validation(cls, task) -> bool:
        """Whether something other than the meta-val split validates (an empty split is then allowed)."""
        return False

    def split(self, corpus: Corpus) -> dict[str, list[int]]:
        """Each split's row indices; the meta-split and a digest of each split's rows are kept for `run_files` (rows
        rewritten since are told apart)."""
        keys, self.meta_split = self.meta_split_of(corpus)
        rows = split_rows(keys, self.meta_split)
        self.digests = {name: rows_digest(corpus, index) for name, index in rows.items()}
        return rows

    def meta_split_of(self, corpus: Corpus) -> tuple[list[str], MetaSplit]:
        """Each row's split key (its class or domain), and the keys of each split: drawn by `task.split`."""
        keys = corpus.labels if self.task.split_by == "class" else corpus.require_domains()
        s = self.task.split
        return keys, split_keys(keys, s.val, s.test, s.seed, self.task.split_by)

    def load(self, corpus: Corpus, tokenizer_for: Callable[[list[str]], Tokenizer]) -> Tokenizer:
        rows = self.split(corpus)
        tokenizer = tokenizer_for([corpus.texts[i] for i in rows["train"]])
        self.samplers = self.make_samplers(corpus, encode(tokenizer, corpus.texts), rows)
        return tokenizer

    def load_test(self, corpus: Corpus, tokenizer: Tokenizer, every_row: bool) -> None:
        rows = {"test": list(range(len(corpus)))} if every_row else {"test": self.split(corpus)["test"]}
        self.samplers = self.make_samplers(corpus, encode(tokenizer, corpus.texts), rows)

    def make_samplers(self, corpus: Corpus, tokens, rows: dict[str, list[int]]) -> dict[str, EpisodeSampler]:
        """One EpisodeSampler per split named in `rows` (its row indices); none for an empty split."""
        task, by_domain = self.task, self.task.split_by == "domain"
        row_classes = corpus.class_keys(by_domain)
        samplers = {}
        for name, index in rows.items():
            if not index:  # a split asked to be empty: fixed tasks stand in for it
                continue
            groups = class_groups(
                [row_classes[i] for i in index], [corpus.domains[i] for i in index] if by_domain else None
            )
            training = name == "train"
            n_query = task.meta_train_query if training and task.meta_train_query is not None else task.n_query
            n_way = task.meta_train_way if training and task.meta_train_way is not None else task.n_way
            samplers[name] = EpisodeSampler(
                tokens[index], [row_classes[i] for i in index], groups, n_way, task.k_shot, n_query,
                split_name=name, drop_small_classes=task.drop_small_classes, fixed_labels=task.labels == "fixed",
                natural_query=task.query == "natural",
            )  # fmt: skip
        return samplers

    def train_sampler(self) -> EpisodeSampler:
        return self.samplers["train"]

    def validation_episodes(self, tokenizer: Tokenizer, count: int, seed: int) -> list[Episode]:
        return self.samplers["val"].fixed_episodes(count, seed)

    def test_set(self, tokenizer: Tokenizer, count: int, seed: int, scored: str = "test") -> TestSet:
        return TestSet(self.samplers["test"].fixed_episodes(count, seed))

    def check_scored(self, scored: str) -> None:
        if scored != "test":
            raise UserError(
                f"scored={scored} scores each fixed task's {scored} file, but the run has no fixed tasks. Give fixed "
                "tasks with a dev file each (task=fixed_tasks task.eval_tasks=[{name: ..., train: ..., test: ..., "
                "dev: ...}]), or score the test files (scored=test)."
            )

    def check_algorithm(self, algorithm) -> None:
        way = self.task.meta_train_way
        if way not in (None, self.task.n_way) and (not algorithm.any_n_way or self.task.labels == "fixed"):
            raise UserError(
                f"task.meta_train_way={way} differs from task.n_way={self.task.n_way}, which only an algorithm that "
                "builds its head from each support set can train with (algo=protonet), and only with "
                f"task.labels=permuted; this run has {type(algorithm).__name__} with task.labels={self.task.labels}. "
                "Remove task.meta_train_way, or set it to task.n_way."
            )

    def run_files(self) -> dict[str, str]:
        return split_files(self.meta_split, self.digests)


def rows_digest(corpus: Corpus, index: list[int]) -> str:
    """The SHA-256 of some rows of `corpus` (text, label and domain of each, in order)."""
    return digest_rows((corpus.texts[i], corpus.labels[i], corpus.domains[i] if corpus.domains else "") for i in index)

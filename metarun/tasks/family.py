"""What a task family is: how a run's data becomes meta-training episodes, the validation that picks `best.pt`, and
the meta-test. A family is a class with a schema; `conf/task/<name>.yaml` names it as its `_target_`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from metarun.data import Corpus
from metarun.episodes import SPLITS, Episode, EpisodeSampler, MetaSplit
from metarun.errors import UserError
from metarun.objectives import Classification, Objective


@dataclass(frozen=True)
class TestSet:
    """What a meta-test scores: sampled episodes (intervals over episodes), or fixed tasks, one episode each, scored
    as a whole with every metric (intervals over tasks)."""

    episodes: list[Episode]
    task_names: list[str] | None = None  # fixed tasks: one name per episode; None for sampled episodes
    label_names: dict[str, list[str]] = field(default_factory=dict)  # each fixed task's labels, by id


class TaskFamily:
    """A family built from its settings (`cfg.task`: `schema`'s fields; what is not given takes the schema's
    default). A run calls, in order: `load` (the data, the tokenizer fitted on what it says is meta-train text),
    `check_algorithm`, `prepare`, `validation_episodes`, `train_sampler`, `test_set`, and writes `run_files` into its
    folder (a resume first checks them, `check_run_files`). `metarun-eval` calls `check_scored`, then `load_test`
    instead of `load` when `tests_on_corpus` (and `check_run_files` on the run's own data), then `test_set`. Its
    `objective` says what the targets are (labels or ratings)."""

    schema: ClassVar[type]
    tests_on_corpus: ClassVar[bool] = True  # whether the meta-test is drawn from the run's data (`load_test`)
    split_settings: ClassVar[tuple[str, ...]] = ()  # the settings that decide which of the data is unseen

    def __init__(self, **settings: Any) -> None:
        self.task: DictConfig = OmegaConf.structured(self.schema(**settings))

    @classmethod
    def settings_problems(cls, task: DictConfig) -> list[str]:
        """What is wrong with a combination of settings, told before any data is read (ranges are the schema's)."""
        return []

    def load(self, corpus: Corpus, tokenizer_for: Callable[[list[str]], Tokenizer]) -> Tokenizer:
        """Split `corpus` for meta-training; returns `tokenizer_for(meta-train texts)`, which encodes everything."""
        raise NotImplementedError

    def load_test(self, corpus: Corpus, tokenizer: Tokenizer, every_row: bool) -> None:
        """Only what the meta-test needs of `corpus`: its test split, or with `every_row` all of it (other data
        than the run's, all of it unseen)."""
        raise NotImplementedError

    @property
    def n_train_classes(self) -> int:
        """The number of meta-training classes (a supervised baseline's pre-training head is that wide)."""
        return self.train_sampler().n_classes

    @property
    def objective(self) -> Objective:
        """What the tasks' targets are: labels (cross-entropy, class scores) or ratings (squared error)."""
        return Classification()

    def train_sampler(self) -> EpisodeSampler:
        raise NotImplementedError

    def validation_episodes(self, tokenizer: Tokenizer, count: int, seed: int) -> list[Episode]:
        """The same episodes at every validation."""
        raise NotImplementedError

    def test_set(self, tokenizer: Tokenizer, count: int, seed: int, scored: str = "test") -> TestSet:
        """What the meta-test scores; `scored` names the files of fixed tasks (`check_scored` says which exist)."""
        raise NotImplementedError

    def check_scored(self, scored: str) -> None:
        """Refuse a `scored` (metarun-eval's `scored=`) this family has no files for."""

    def check_algorithm(self, algorithm) -> None:
        """Refuse an algorithm this family's settings do not work with."""

    def prepare(self, algorithm) -> None:
        """Set what the data says of a fresh model's weights (a rating's head starts at the meta-train mean)."""

    def run_files(self) -> dict[str, str]:
        """Files for the run folder (name -> text), for whoever uses the run later."""
        return {}

    def check_run_files(self, folder: Path) -> None:
        """Refuse data that gives other `run_files` than the run in `folder` wrote: the data changed since, and its
        meta-test could hold classes the run meta-trained on."""
        for name, text in self.run_files().items():
            if (folder / name).is_file() and (folder / name).read_text() != text:
                raise UserError(
                    f"The data is not the data of the run in {folder}: it now gives another {name} than the run wrote "
                    "(rows, classes or domains were changed, added or removed since), so its scores would not be the "
                    f"run's and its meta-test could hold classes the run meta-trained on. Give the data the run was "
                    f"trained on, or compare {folder / name} with it."
                )


def split_files(split: MetaSplit, digests: dict[str, str]) -> dict[str, str]:
    """The `run_files` of a family that splits its data's keys (classes, domains, users): the split, and the digest of
    each split's rows."""
    return {"splits.json": json.dumps({n: getattr(split, n) for n in SPLITS}, indent=1),
            "data.json": json.dumps({"rows_sha256": digests}, indent=1)}  # fmt: skip


def digest_rows(rows: Iterable[tuple]) -> str:
    """The SHA-256 of rows of values (each row as JSON, in order): what `run_files` records of a split's data."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()

"""Fixed evaluation tasks (the ARSC protocol): meta-training on sampled episodes of the data's domains (or classes),
and a meta-test of named tasks, each with its own files: it adapts on its train file (or `task.eval_shots` examples
per label drawn once from it) and is scored on its whole test file; validation scores their dev files when every
task names one, else sampled meta-val episodes."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
from omegaconf import MISSING
from tokenizers import Tokenizer

from metarun.data import Corpus, load_local
from metarun.episodes import Episode
from metarun.errors import UserError, brief
from metarun.schema import schema, setting
from metarun.tasks.sampled import SampledEpisodes, SampledTaskConfig
from metarun.tasks.family import TestSet
from metarun.tokenizer import encode
from metarun.tokens import trim_padding


@dataclass
class EvalTaskConfig:
    name: str = MISSING
    train: str = MISSING  # the labelled file adapted on
    test: str = MISSING  # the file scored
    dev: Optional[str] = None  # a labelled file scored at each validation instead of meta-val episodes


@schema("task", "fixed")
@dataclass
class FixedTasksConfig(SampledTaskConfig):
    _target_: str = "metarun.tasks.FixedTasks"
    eval_tasks: List[EvalTaskConfig] = MISSING  # the meta-test: every task, with its files
    # each task adapts on this many examples per label, drawn once from its train file (seeded by split.seed and the
    # task's name: every run and algorithm gets the same support); null: the whole train file
    eval_shots: Optional[int] = setting(None, least=1)
    # the task files' columns and length cut: the data's own, where its source has them (load_local's defaults else)
    text_column: str = "${oc.select:data.text_column,text}"
    label_column: str = "${oc.select:data.label_column,label}"
    max_chars: int = "${oc.select:data.max_chars,5000}"  # type: ignore[assignment]


@dataclass(frozen=True)
class FixedTask:
    """One fixed evaluation task as read: the examples it adapts on, the file it is scored on, its labels by id."""

    name: str
    support: Corpus
    scored: Corpus
    labels: list[str]

    def ids(self, labels: list[str]) -> torch.Tensor:
        """Label names as this task's label ids."""
        index = {label: i for i, label in enumerate(self.labels)}
        return torch.tensor([index[label] for label in labels])

    def episode(self, tokenizer: Tokenizer) -> Episode:
        """The whole task as one episode: its support set, and every row of its scored file as the query."""
        return Episode(
            support_x=trim_padding(encode(tokenizer, self.support.texts)), support_y=self.ids(self.support.labels),
            query_x=trim_padding(encode(tokenizer, self.scored.texts)), query_y=self.ids(self.scored.labels),
            class_ids=torch.arange(len(self.labels)),
        )  # fmt: skip


def support_draw(corpus: Corpus, shots: int, seed: str, file: str) -> Corpus:
    """`shots` examples of each label of `corpus`, the same ones for the same `seed` (in the file's order)."""
    keep = []
    for label in sorted(set(corpus.labels)):
        rows = [i for i, found in enumerate(corpus.labels) if found == label]
        if len(rows) < shots:
            raise UserError(
                f"task.eval_shots={shots} needs {shots} examples of each label in {file}, but {label!r} has "
                f"{len(rows)}; lower task.eval_shots or leave it null to adapt on the whole file."
            )
        keep += random.Random(f"{seed}:{label}").sample(rows, shots)
    keep.sort()
    return Corpus([corpus.texts[i] for i in keep], [corpus.labels[i] for i in keep], None, source=corpus.source)


class FixedTasks(SampledEpisodes):
    schema: ClassVar[type] = FixedTasksConfig
    tests_on_corpus: ClassVar[bool] = False

    @classmethod
    def settings_problems(cls, task) -> list[str]:
        if not task.eval_tasks:
            return ["task=fixed_tasks scores fixed evaluation tasks, but task.eval_tasks is empty; give them as "
                    "task.eval_tasks=[{name: ..., train: ..., test: ..., dev: ...}]."]  # fmt: skip
        return super().settings_problems(task)

    @classmethod
    def has_own_test(cls, task) -> bool:
        return True  # the fixed tasks

    @classmethod
    def has_own_validation(cls, task) -> bool:
        return every_task_has_dev_file(task)  # their dev files

    def _read(self, spec, file: str) -> Corpus:
        """One of a task's files, read with the task family's columns and cut."""
        task = self.task
        return load_local(spec[file], text_column=task.text_column, label_column=task.label_column,
                          max_chars=task.max_chars, setting=f"task.eval_tasks {spec.name}'s {file}")  # fmt: skip

    def _support(self, spec) -> Corpus:
        """What a task adapts on: its train file, or `task.eval_shots` examples of each label drawn once from it."""
        support = self._read(spec, "train")
        if self.task.eval_shots:
            support = support_draw(support, self.task.eval_shots, f"{self.task.split.seed}:{spec.name}", spec.train)
        return support

    def tasks(self, scored: str = "test") -> list[FixedTask]:
        """Every task as read, scored on its `scored` file (test, or dev for validation)."""
        tasks = []
        for spec in self.task.eval_tasks:
            support, query = self._support(spec), self._read(spec, scored)
            labels = sorted(set(support.labels))
            unknown = sorted(set(query.labels) - set(labels))
            if unknown:
                raise UserError(f"Evaluation task {spec.name!r}: {spec[scored]} has labels {brief(unknown)} absent "
                                f"from {spec.train}.")  # fmt: skip
            tasks.append(FixedTask(spec.name, support, query, labels))
        return tasks

    def check_algorithm(self, algorithm) -> None:
        """A meta-learned head has task.n_way outputs: every task must have that many labels. A head built for each
        task (zero, random, prototypes; protonet) adapts to any number, e.g. a full label set of 150 intents."""
        super().check_algorithm(algorithm)
        if not algorithm.learns_head:
            return
        for spec in self.task.eval_tasks:  # only what each adapts on: the files it is scored on are read later
            labels = sorted(set(self._support(spec).labels))
            if len(labels) != self.task.n_way:
                raise UserError(
                    f"Evaluation task {spec.name!r}: its train file has {len(labels)} labels ({brief(labels)}), but "
                    f"task.n_way={self.task.n_way} and algo.head_init=learned meta-learns a head of that many; set "
                    f"task.n_way={len(labels)}, or let each task build its head (algo.head_init=zero|prototypes)."
                )

    def validation_episodes(self, tokenizer: Tokenizer, count: int, seed: int) -> list[Episode]:
        if self.has_own_validation(self.task):
            return [t.episode(tokenizer) for t in self.tasks("dev")]
        return super().validation_episodes(tokenizer, count, seed)

    def test_set(self, tokenizer: Tokenizer, count: int, seed: int, scored: str = "test") -> TestSet:
        tasks = self.tasks(scored)  # one score per task: the intervals are over tasks
        labels = {t.name: t.labels for t in tasks}
        return TestSet([t.episode(tokenizer) for t in tasks], [t.name for t in tasks], labels)

    def check_scored(self, scored: str) -> None:
        if scored == "dev" and not every_task_has_dev_file(self.task):
            lacking = ", ".join(t.name for t in self.task.eval_tasks if not t.dev)
            raise UserError(
                f"scored=dev scores each fixed task's dev file, but these fixed tasks name no dev file: {lacking}. "
                "Give every task in task.eval_tasks a dev file ({name: ..., train: ..., test: ..., dev: ...}), or "
                "score the test files (scored=test)."
            )


def every_task_has_dev_file(task) -> bool:
    """Whether each fixed evaluation task names a dev file (which then validates, or is scored)."""
    return bool(task.eval_tasks) and all(t.dev for t in task.eval_tasks)

"""Class splits given as files (the protocol of ProtAugment, Dopierre et al., 2021, and the papers that compare with
it): `task.class_splits` is a folder holding `train.labels.txt`, `valid.labels.txt` and `test.labels.txt`, one label
per line; or given in the config (`task.classes`, as Bao et al.'s HuffPost split is published). Episodes are drawn
over those classes as `SampledEpisodes` draws them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Optional

from metarun.data import Corpus
from metarun.episodes import MetaSplit
from metarun.errors import UserError, brief
from metarun.schema import schema
from metarun.tasks.sampled import SampledEpisodes, SampledTaskConfig

FILES = {"train": "train.labels.txt", "val": "valid.labels.txt", "test": "test.labels.txt"}


@dataclass
class ClassListsConfig:
    train: List[str] = field(default_factory=list)
    val: List[str] = field(default_factory=list)
    test: List[str] = field(default_factory=list)


@schema("task", "class_splits")
@dataclass
class ClassSplitsConfig(SampledTaskConfig):
    _target_: str = "metarun.tasks.class_splits.ClassSplits"
    class_splits: Optional[str] = None  # the folder of the split's three label files (task.split is not read)
    classes: ClassListsConfig = field(default_factory=ClassListsConfig)  # or the three lists, when no folder is given


class ClassSplits(SampledEpisodes):
    schema: ClassVar[type] = ClassSplitsConfig
    split_settings: ClassVar[tuple[str, ...]] = ("class_splits", "classes")

    @classmethod
    def settings_problems(cls, task) -> list[str]:
        if (task.class_splits is None) == (not any(task.classes.values())):
            return ["task=class_splits takes its split from one place: task.class_splits=<a folder of "
                    f"{', '.join(FILES.values())}> or task.classes={{train: [...], val: [...], test: [...]}}; "
                    "give one of the two."]  # fmt: skip
        return super().settings_problems(task)

    def meta_split_of(self, corpus: Corpus) -> tuple[list[str], MetaSplit]:
        """Each row's class, and the classes of each split: as the three files (or `task.classes`) list them."""
        if self.task.class_splits is None:  # then task.classes lists them
            where = "task.classes"
            listed = {name: [str(label) for label in self.task.classes[name]] for name in FILES}
        else:
            where = f"task.class_splits={self.task.class_splits!r}"
            listed = {name: read_labels(Path(self.task.class_splits) / file) for name, file in FILES.items()}
        twice = sorted(set(listed["train"]) & set(listed["val"]) | set(listed["train"]) & set(listed["test"])
                       | set(listed["val"]) & set(listed["test"]))  # fmt: skip
        absent = sorted({label for labels in listed.values() for label in labels} - set(corpus.labels))
        unlisted = sorted(set(corpus.labels) - {label for labels in listed.values() for label in labels})
        for problem, labels in (("are in more than one split file", twice), (f"are not in {corpus.source}", absent),
                                ("of the data are in no split file", unlisted)):  # fmt: skip
            if labels:
                raise UserError(
                    f"{where}: the labels {brief(labels)} {problem}; every label of the data must be in exactly one "
                    f"of {', '.join(FILES.values()) if self.task.class_splits else 'train, val and test'}."
                )
        return corpus.labels, MetaSplit(**{name: sorted(labels) for name, labels in listed.items()})


def read_labels(path: Path) -> list[str]:
    """One label per line; blank lines are skipped."""
    if not path.is_file():
        raise UserError(f"task.class_splits: {path} does not exist; the folder must hold {', '.join(FILES.values())}.")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]

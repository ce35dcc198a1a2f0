"""Class splits given as files (the protocol of ProtAugment, Dopierre et al., 2021, and the papers that compare with
it): `task.class_splits` is a folder holding `train.labels.txt`, `valid.labels.txt` and `test.labels.txt`, one label
per line, and episodes are drawn over those classes as `SampledEpisodes` draws them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from omegaconf import MISSING

from metarun.data import Corpus
from metarun.episodes import MetaSplit
from metarun.errors import UserError, brief
from metarun.schema import schema
from metarun.tasks.sampled import SampledEpisodes, SampledTaskConfig

FILES = {"train": "train.labels.txt", "val": "valid.labels.txt", "test": "test.labels.txt"}


@schema("task", "class_splits")
@dataclass
class ClassSplitsConfig(SampledTaskConfig):
    _target_: str = "metarun.tasks.class_splits.ClassSplits"
    class_splits: str = MISSING  # the folder of the split's three label files (task.split is not read)


class ClassSplits(SampledEpisodes):
    schema: ClassVar[type] = ClassSplitsConfig
    split_settings: ClassVar[tuple[str, ...]] = ("class_splits",)

    def meta_split_of(self, corpus: Corpus) -> tuple[list[str], MetaSplit]:
        """Each row's class, and the classes of each split: as the three files list them."""
        folder = Path(self.task.class_splits)
        listed = {name: read_labels(folder / file) for name, file in FILES.items()}
        twice = sorted(set(listed["train"]) & set(listed["val"]) | set(listed["train"]) & set(listed["test"])
                       | set(listed["val"]) & set(listed["test"]))  # fmt: skip
        absent = sorted({label for labels in listed.values() for label in labels} - set(corpus.labels))
        unlisted = sorted(set(corpus.labels) - {label for labels in listed.values() for label in labels})
        for problem, labels in (("are in more than one split file", twice), (f"are not in {corpus.source}", absent),
                                ("of the data are in no split file", unlisted)):  # fmt: skip
            if labels:
                raise UserError(
                    f"task.class_splits={str(folder)!r}: the labels {brief(labels)} {problem}; every label of the "
                    f"data must be in exactly one of {', '.join(FILES.values())}."
                )
        return corpus.labels, MetaSplit(**{name: sorted(labels) for name, labels in listed.items()})


def read_labels(path: Path) -> list[str]:
    """One label per line; blank lines are skipped."""
    if not path.is_file():
        raise UserError(f"task.class_splits: {path} does not exist; the folder must hold {', '.join(FILES.values())}.")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]

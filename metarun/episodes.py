"""Meta-splits and N-way K-shot episodes.

Classes (task=fewshot_cls) or domains (task=domain_adapt) are split into disjoint meta-train,
meta-validation and meta-test sets; an episode draws N classes from one group (all classes of a
split, or one domain), K support and Q query examples of each, labels in a fresh random order.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from metarun.errors import UserError, brief
from metarun.tokens import trim_padding

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MetaSplit:
    """Disjoint sets of split keys (class names or domain names)."""

    train: list[str]
    val: list[str]
    test: list[str]


def _count(size: float | int, total: int, name: str, noun: str) -> int:
    count = round(size * total) if isinstance(size, float) and size < 1 else int(size)
    if (count < 1 and size != 0) or count >= total:  # 0 only as asked for (fixed tasks stand in for the split)
        raise UserError(
            f"task.split.{name}={size} gives {count} of {total} {noun}s; give a fraction in (0, 1) or a count "
            f"from 1 to {total - 1}."
        )
    return count


def split_keys(keys: list[str], val: float | int, test: float | int, seed: int, kind: str = "class") -> MetaSplit:
    """Test keys are `random.Random(seed).sample(sorted(keys), n_test)`; val is drawn the same way from the rest.

    `kind` ("class" or "domain") says what the keys are, for the error messages."""
    noun = "label" if kind == "class" else kind
    keys = sorted(set(keys))
    needed = 1 + (val != 0) + (test != 0)  # a split asked to be empty needs no key
    if len(keys) < needed:
        fix = (
            "Check that data.label_column names the label column, or give data with more labels"
            if kind == "class"
            else "Check that data.domain_column names the domain column, give data with more domains, or use "
            "task=fewshot_cls to split by label instead"
        )
        raise UserError(
            f"The data has {len(keys)} distinct {noun}(s) ({brief(keys)}), but task.split_by={kind} gives "
            f"meta-train, meta-val and meta-test {noun}s of their own, so at least {needed} are needed "
            f"(one per split; more, to form task.n_way-way episodes in each). {fix}."
        )
    test_keys = random.Random(seed).sample(keys, _count(test, len(keys), "test", noun))
    rest = sorted(set(keys) - set(test_keys))
    n_val = _count(val, len(keys), "val", noun)
    if n_val >= len(rest):
        raise UserError(f"task.split (val={val}, test={test}) leaves no meta-training {noun}s out of {len(keys)}.")
    val_keys = random.Random(seed).sample(rest, n_val)
    train_keys = sorted(set(rest) - set(val_keys))
    return MetaSplit(sorted(train_keys), sorted(val_keys), sorted(test_keys))


@dataclass(frozen=True)
class Episode:
    support_x: torch.Tensor  # [N*K, L] token ids
    support_y: torch.Tensor  # [N*K] labels in 0..N-1
    query_x: torch.Tensor  # [N*Q, L]
    query_y: torch.Tensor  # [N*Q]
    class_ids: torch.Tensor  # [N] label l's class: its index among its split's classes (fixed labels: l itself)

    @property
    def n_way(self) -> int:
        return len(self.class_ids)

    def to(self, device: torch.device) -> Episode:
        return replace(self, **{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})


class EpisodeSampler:
    """Draws N-way K-shot episodes from one meta-split of pre-tokenized rows."""

    def __init__(
        self,
        tokens: torch.Tensor,
        row_classes: list[str],
        class_groups: dict[str, list[str]],
        n_way: int,
        k_shot: int,
        n_query: int,
        split_name: str,
        drop_small_classes: bool = False,
        fixed_labels: bool = False,
        natural_query: bool = False,
    ) -> None:
        self.tokens, self.n_way, self.k_shot, self.n_query = tokens, n_way, k_shot, n_query
        self.natural_query = natural_query
        rows = defaultdict(list)
        for index, key in enumerate(row_classes):
            rows[key].append(index)
        needed = k_shot + n_query
        small = sorted(c for group in class_groups.values() for c in group if len(rows[c]) < needed)
        if small and not drop_small_classes:
            raise UserError(
                f"task.k_shot + task.n_query = {k_shot} + {n_query} = {needed} examples per class, but "
                f"{len(small)} {split_name} class(es) have fewer: {brief(small)} (smallest has "
                f"{min(len(rows[c]) for c in small)}). Lower k_shot or n_query, or set "
                "task.drop_small_classes=true to leave those classes out."
            )
        self.groups = {g: [c for c in cs if c not in small] for g, cs in class_groups.items()}
        thin = {g: len(cs) for g, cs in self.groups.items() if len(cs) < n_way}
        if thin and len(thin) < len(self.groups):  # domains that cannot form an episode leave, the others serve
            logging.getLogger(__name__).warning(
                f"meta-{split_name}: domain(s) {brief(sorted(thin))} have fewer than task.n_way={n_way} usable "
                "classes and are left out of its episodes."
            )
            self.groups = {g: cs for g, cs in self.groups.items() if g not in thin}
        elif thin:
            where = "the split" if list(self.groups) == ["all"] else f"group(s) {brief(thin)}"
            raise UserError(
                f"task.n_way={n_way} is larger than the {min(thin.values())} usable classes of {where} in "
                f"meta-{split_name}; choose n_way of at most {min(thin.values())}, or move more classes "
                "into that split with task.split."
            )
        self.label_ids = fixed_label_ids(self.groups, n_way, split_name) if fixed_labels else None
        if self.label_ids is not None:
            self.groups = {g: cs for g, cs in self.groups.items() if all(c in self.label_ids for c in cs)}
        self.classes = sorted(c for cs in self.groups.values() for c in cs)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.rows = {c: torch.tensor(rows[c]) for c in self.classes}
        self.group_names = sorted(self.groups)

    def sample(self, rng: random.Random) -> Episode:
        group = self.groups[rng.choice(self.group_names)]
        classes = rng.sample(group, self.n_way)  # random order = labels permuted per episode
        if self.label_ids is None:
            labels = torch.arange(self.n_way)  # the draw's order: labels permuted per episode
        else:
            labels = torch.tensor([self.label_ids[c] for c in classes])
        support, query, query_y = [], [], []
        for c, label in zip(classes, labels):
            picked = self.rows[c][rng.sample(range(len(self.rows[c])), self.k_shot + self.n_query)]
            support.append(picked[: self.k_shot])
            query.append(picked[self.k_shot :])
            query_y.append(label.repeat(self.n_query))
        if self.natural_query:  # as many queries, drawn from all the classes' rows left after the support
            left = [(row, label) for c, label, s in zip(classes, labels, support)
                    for row in sorted(set(self.rows[c].tolist()) - set(s.tolist()))]  # fmt: skip
            drawn = rng.sample(left, self.n_way * self.n_query)
            query, query_y = [torch.tensor([r for r, _ in drawn])], [torch.stack([y for _, y in drawn])]
        if self.label_ids is None:
            class_ids = torch.tensor([self.class_index[c] for c in classes])
        else:  # label l's class is l itself, whatever order the classes were drawn in
            class_ids = torch.arange(self.n_way)
        return Episode(
            support_x=trim_padding(self.tokens[torch.cat(support)]),
            support_y=labels.repeat_interleave(self.k_shot),
            query_x=trim_padding(self.tokens[torch.cat(query)]),
            query_y=torch.cat(query_y),
            class_ids=class_ids,
        )

    @property
    def n_classes(self) -> int:
        """How many distinct `class_ids` episodes carry: the split's classes, or with fixed labels the label set
        all domains share (what a supervised baseline pre-trains on)."""
        return self.n_way if self.label_ids is not None else len(self.classes)

    def fixed_episodes(self, count: int, seed: int) -> list[Episode]:
        """The same `count` episodes for every run and algorithm that uses this seed."""
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(count)]


def label_name(class_key: str) -> str:
    """The label of a class key (`label`, or `domain/label` when classes live inside domains)."""
    return class_key.rsplit("/", 1)[-1]


def fixed_label_ids(groups: dict[str, list[str]], n_way: int, split_name: str) -> dict[str, int]:
    """task.labels=fixed: each class's label id, its label name's place among the sorted names. Every episode must
    hold the same `n_way` names once each: a domain without all of them is left out, with a warning."""
    names = sorted({label_name(c) for cs in groups.values() for c in cs})
    uneven = sorted(g for g, cs in groups.items() if sorted(map(label_name, cs)) != names)
    if len(names) != n_way or len(uneven) == len(groups):
        raise UserError(
            f"task.labels=fixed gives every label the same id in every episode, so every meta-{split_name} episode "
            f"must hold the same {n_way} labels (task.n_way), once each; meta-{split_name} has {len(names)} label "
            f"names ({brief(names)}). Use task.n_way={len(names)} with a label set every domain shares, or "
            "task.labels=permuted."
        )
    if uneven:
        logging.getLogger(__name__).warning(
            f"meta-{split_name}: domain(s) {brief(uneven)} lack some of the labels {brief(names)} and are left out "
            "of its episodes (task.labels=fixed)."
        )
    ids = {name: i for i, name in enumerate(names)}
    return {c: ids[label_name(c)] for g, cs in groups.items() if g not in uneven for c in cs}


def split_rows(keys_per_row: list[str], split: MetaSplit) -> dict[str, list[int]]:
    """Row indices of each meta-split."""
    where = {key: name for name in SPLITS for key in getattr(split, name)}
    rows: dict[str, list[int]] = {name: [] for name in SPLITS}
    for index, key in enumerate(keys_per_row):
        rows[where[key]].append(index)
    return rows


def class_groups(row_classes: list[str], row_groups: list[str] | None) -> dict[str, list[str]]:
    """Classes an episode may combine: all of them (one group) or those of one domain each."""
    groups: dict[str, set[str]] = defaultdict(set)
    for index, cls in enumerate(row_classes):
        groups["all" if row_groups is None else row_groups[index]].add(cls)
    return {g: sorted(cs) for g, cs in groups.items()}

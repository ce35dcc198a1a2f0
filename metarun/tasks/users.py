"""Personalised recommendation: each user is a task. A user's rated items are split into a support set (what the
model adapts on) and a query set (whose ratings it predicts); users are split into meta-train, meta-val and meta-test
users, so a test user was never seen in meta-training. MeLU's protocol (Lee et al., 2019): users with 13 to 100
ratings, 10 query items and the rest as support; or a fixed number of support items (`task.k_shot`)."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from tokenizers import Tokenizer

from metarun.data import Ratings
from metarun.episodes import SPLITS, Episode, split_keys
from metarun.errors import UserError, brief
from metarun.objectives import Regression
from metarun.schema import schema, setting
from metarun.tasks.family import TaskFamily, TestSet, digest_rows, split_files
from metarun.tasks.sampled import SplitConfig
from metarun.tokenizer import encode
from metarun.tokens import trim_padding


@schema("task", "users")
@dataclass
class UsersTaskConfig:
    _target_: str = "metarun.tasks.users.UserTasks"
    n_way: int = setting(1, least=1, below=2)  # the head's outputs: one, the predicted rating
    k_shot: Optional[int] = setting(None, least=1)  # support items per user; null: every rating but the query's (MeLU)
    n_query: int = setting(10, least=1)  # query items per user
    min_ratings: int = setting(13, least=2)  # users with fewer ratings are left out (MeLU: 13)
    max_ratings: Optional[int] = setting(100, least=2)  # and with more (MeLU: 100); null: no limit
    split: SplitConfig = field(default_factory=lambda: SplitConfig(val=0.1, test=0.1))  # fractions (or counts) of users
    liked: float = 4.0  # a rating of at least this counts as liked (accuracy, balanced accuracy and AUC of that view)


class UserSampler:
    """Draws one user's task at a time: `n_query` of their rated items as the query, the rest (or `k_shot` of it) as
    the support. `tokens` holds each item's text once, whoever rated it."""

    def __init__(self, tokens: torch.Tensor, ratings: dict[str, list[tuple[int, float]]], k_shot: int | None,
                 n_query: int) -> None:  # fmt: skip
        self.tokens, self.ratings, self.k_shot, self.n_query = tokens, ratings, k_shot, n_query
        self.users = sorted(ratings)

    @property
    def n_classes(self) -> int:
        return 1  # one output: a rating means the same in every task

    def episode(self, user: str, rng: random.Random) -> Episode:
        rated = list(self.ratings[user])
        rng.shuffle(rated)
        query, rest = rated[: self.n_query], rated[self.n_query :]
        support = rest if self.k_shot is None else rest[: self.k_shot]
        rows = lambda pairs: trim_padding(self.tokens[torch.tensor([row for row, _ in pairs])])  # noqa: E731
        targets = lambda pairs: torch.tensor([target for _, target in pairs], dtype=torch.float32)  # noqa: E731
        return Episode(rows(support), targets(support), rows(query), targets(query), torch.zeros(1, dtype=torch.long))

    def sample(self, rng: random.Random) -> Episode:
        return self.episode(rng.choice(self.users), rng)

    def fixed_episodes(self, count: int, seed: int) -> list[Episode]:
        """One task for each of `count` users (all of them when fewer), in a seeded order; a user's query is the same
        for every run that uses this seed, whatever its `k_shot`."""
        users = random.Random(seed).sample(self.users, min(count, len(self.users)))
        return [self.episode(user, random.Random(f"{seed}:{user}")) for user in users]


class UserTasks(TaskFamily):
    schema: ClassVar[type] = UsersTaskConfig
    split_settings: ClassVar[tuple[str, ...]] = ("split", "min_ratings", "max_ratings")

    @property
    def objective(self) -> Regression:
        return Regression(self.task.liked)

    def load(self, ratings: Ratings, tokenizer_for: Callable[[list[str]], Tokenizer]) -> Tokenizer:
        rows = self.split(ratings)
        train_items = sorted({ratings.items[i] for i in rows["train"]})
        tokenizer = tokenizer_for([ratings.item_texts[item] for item in train_items])
        self.samplers = self.make_samplers(ratings, tokenizer, rows)
        self.train_mean = sum(ratings.targets[i] for i in rows["train"]) / len(rows["train"])
        return tokenizer

    def load_test(self, ratings: Ratings, tokenizer: Tokenizer, every_row: bool) -> None:
        if every_row:  # other users: every one of them
            rows = [i for index in self.eligible_users(ratings).values() for i in index]
        else:
            rows = self.split(ratings)["test"]
        self.samplers = self.make_samplers(ratings, tokenizer, {"test": rows})

    def split(self, ratings: Ratings) -> dict[str, list[int]]:
        """Each split's rows (its users' ratings); the user split and a digest of each split's rows are kept for
        `run_files`."""
        users = self.eligible_users(ratings)
        s = self.task.split
        self.meta_split = split_keys(sorted(users), s.val, s.test, s.seed, "user")
        rows = {name: [i for u in getattr(self.meta_split, name) for i in users[u]] for name in SPLITS}
        self.digests = {name: ratings_digest(ratings, index) for name, index in rows.items()}
        return rows

    def eligible_users(self, ratings: Ratings) -> dict[str, list[int]]:
        """Each user's rows, for the users with `min_ratings` to `max_ratings` ratings, each item once."""
        if not isinstance(ratings, Ratings):
            raise UserError(f"task=users reads ratings of items by users (data=ratings), not {type(ratings).__name__}; "
                            "give data=ratings data.ratings=<file> data.items=<file>.")  # fmt: skip
        rows: dict[str, list[int]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()
        repeated = []
        for i, (user, item) in enumerate(zip(ratings.users, ratings.items)):
            if (user, item) in seen:  # kept once: a query item must not also be in the same user's support
                repeated.append(f"{user}/{item}")
                continue
            seen.add((user, item))
            rows[user].append(i)
        if repeated:
            logging.getLogger(__name__).warning(
                f"{ratings.source}: {len(repeated)} rating(s) repeat an item the same user rated before "
                f"({brief(repeated)}); each user's first rating of an item is kept."
            )
        low, high = self.task.min_ratings, self.task.max_ratings or float("inf")
        kept = {u: r for u, r in rows.items() if low <= len(r) <= high}
        if not kept:
            raise UserError(f"No user of {ratings.source} has task.min_ratings={low} to task.max_ratings="
                            f"{self.task.max_ratings} ratings ({len(rows)} users, {min(map(len, rows.values()))} to "
                            f"{max(map(len, rows.values()))} ratings each); widen that range.")  # fmt: skip
        return kept

    def make_samplers(self, ratings: Ratings, tokenizer: Tokenizer, rows: dict[str, list[int]]
                      ) -> dict[str, UserSampler]:  # fmt: skip
        """One sampler per split: its users' ratings, the items' texts tokenized once. Users with fewer ratings than
        `k_shot + n_query` are left out of `k_shot` tasks (the split stays the one MeLU's range gives)."""
        items = sorted({ratings.items[i] for index in rows.values() for i in index})
        place = {item: row for row, item in enumerate(items)}
        tokens = encode(tokenizer, [ratings.item_texts[item] for item in items])
        needed = (self.task.k_shot or 1) + self.task.n_query
        samplers = {}
        for name, index in rows.items():
            by_user: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for i in index:
                by_user[ratings.users[i]].append((place[ratings.items[i]], ratings.targets[i]))
            short = sorted(u for u, rated in by_user.items() if len(rated) < needed)
            if short:
                logging.getLogger(__name__).warning(
                    f"meta-{name}: {len(short)} of {len(by_user)} users have fewer than task.k_shot + task.n_query = "
                    f"{needed} ratings and are left out of its tasks."
                )
            kept = {u: rated for u, rated in by_user.items() if u not in short}
            if not kept:
                raise UserError(f"meta-{name} has no user with task.k_shot + task.n_query = {needed} ratings; lower "
                                "task.k_shot or task.n_query, or raise task.min_ratings.")  # fmt: skip
            samplers[name] = UserSampler(tokens, kept, self.task.k_shot, self.task.n_query)
        return samplers

    def train_sampler(self) -> UserSampler:
        return self.samplers["train"]

    def validation_episodes(self, tokenizer: Tokenizer, count: int, seed: int) -> list[Episode]:
        return self.samplers["val"].fixed_episodes(count, seed)

    def test_set(self, tokenizer: Tokenizer, count: int, seed: int, scored: str = "test") -> TestSet:
        return TestSet(self.samplers["test"].fixed_episodes(count, seed))

    def check_algorithm(self, algorithm) -> None:
        head = algorithm.settings.get("head_init")
        if algorithm.any_n_way or head not in (None, "learned"):
            what = "builds its head from class prototypes" if algorithm.any_n_way else f"starts each task's head {head}"
            raise UserError(
                f"task=users predicts a rating with a head that means the same for every user, so it is meta-learned "
                f"and each user's adaptation starts from it (algo.head_init=learned); {type(algorithm).__name__} "
                f"{what}, which has no meaning for ratings. Use algo=maml, fomaml, anil, metasgd, mamlpp, reptile "
                "or finetune with algo.head_init=learned."
            )
        if algorithm.batched and self.task.k_shot is None:
            raise UserError(
                "algo.batch_tasks=true stacks tasks of one size, but task.k_shot=null gives each user their own "
                "number of support items; set task.k_shot, or algo.batch_tasks=false."
            )

    def prepare(self, algorithm) -> None:
        """The head starts at the mean meta-train rating (its weights near zero), not at 0 stars."""
        with torch.no_grad():
            algorithm.model.head.bias.fill_(self.train_mean)

    def run_files(self) -> dict[str, str]:
        return split_files(self.meta_split, self.digests)


def ratings_digest(ratings: Ratings, index: list[int]) -> str:
    """The SHA-256 of some ratings (user, item, the item's text and the rating of each, in order)."""
    return digest_rows([(ratings.users[i], ratings.items[i], ratings.item_texts[ratings.items[i]],
                            ratings.targets[i]) for i in index])  # fmt: skip

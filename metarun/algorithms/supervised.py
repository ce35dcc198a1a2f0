"""Baselines: ordinary supervised pre-training (`finetune`) or none at all (`scratch`), then fine-tuning.

Both adapt at test time the same way: a fresh N-way head, then `eval_inner_steps` steps on the support set.
`finetune` meta-trains nothing clever: each outer step is one supervised batch (an episode's support and
query examples) classified over ALL meta-train classes with a separate wide head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from metarun.algorithms.adapting import HEAD_INITS, AdaptingAlgoConfig, GradientAlgorithm
from metarun.algorithms.base import OptimizerConfig, Params, TaskStats
from metarun.algorithms.heads import HEAD, head_logits
from metarun.algorithms.scopes import SCOPES
from metarun.episodes import Episode
from metarun.schema import schema, setting
from metarun.tokens import trim_padding


@schema("algo", "supervised")
@dataclass
class SupervisedConfig(AdaptingAlgoConfig):
    _target_: str = "metarun.algorithms.SupervisedBaseline"
    pretrain: bool = True  # supervised training over all meta-train classes first (finetune) or not (scratch)
    eval_inner_steps: int = setting(100, least=0)  # Adam steps on a fresh head (Chen et al., 2019, "Baseline")
    inner_lr: float = setting(0.01, above=0.0)
    inner_optimizer: str = setting("adam", choices=("sgd", "adam"))
    inner_scope: str = setting("head", choices=SCOPES)
    head_init: str = setting("random", choices=HEAD_INITS)
    outer_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1.0e-3))


class SupervisedBaseline(GradientAlgorithm):
    schema: ClassVar[type] = SupervisedConfig

    def __init__(self, model, **settings) -> None:
        super().__init__(model, **settings)
        self.pretrain_head: Params = {}  # a rating's head means the same in every task: pre-training trains it
        if not self.objective.shared_head:
            width = self.model.head.in_features
            like = next(self.model.parameters())
            head = nn.Linear(width, self.n_train_classes or 1).to(like.device, like.dtype)
            self.pretrain_head = {"pretrain_head.weight": head.weight, "pretrain_head.bias": head.bias}

    @classmethod
    def saved_sizes(cls, extra: Params) -> dict[str, int]:
        """The pre-training head's width is the number of meta-training classes (1 when nothing was pre-trained)."""
        head = extra.get("pretrain_head.weight")
        return {"n_train_classes": 1 if head is None else len(head)}

    @property
    def meta_trains(self) -> bool:
        return self.settings["pretrain"]

    @property
    def learns_head(self) -> bool:
        return self.objective.shared_head  # else the N-way head is only used after pre-training

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        return self.pretrain_head if self.meta_trains else {}

    def head_names(self) -> set[str]:
        return {*super().head_names(), *self.pretrain_head}

    def meta_gradient(
        self, params: Params, episode: Episode, outer_step: int | None = None
    ) -> tuple[Params, TaskStats]:
        width = max(episode.support_x.shape[1], episode.query_x.shape[1])
        tokens = trim_padding(
            torch.cat([F.pad(x, (0, width - x.shape[1])) for x in (episode.support_x, episode.query_x)])
        )
        labels = self.objective.pooled_targets(torch.cat([episode.support_y, episode.query_y]), episode.class_ids)
        features = self.logits(params, tokens, features_only=True)
        head = params if not self.pretrain_head else dict(zip(HEAD, self.pretrain_head.values()))
        logits = head_logits(head, features)
        loss = self.objective.loss(logits, labels)
        names = self.meta_learned_names(params)
        wrt = {**{n: params[n] for n in names}, **self.pretrain_head}
        grads = torch.autograd.grad(loss, list(wrt.values()))
        return dict(zip(wrt, grads)), TaskStats(
            loss_after=loss.item(), acc_after=self.objective.quick_score(logits, labels)
        )

"""Baselines: ordinary supervised pre-training (`finetune`) or none at all (`scratch`), then fine-tuning.

Both adapt at test time the same way: a fresh N-way head, then `eval_inner_steps` steps on the support set.
`finetune` meta-trains nothing clever: each outer step is one supervised batch (an episode's support and
query examples) classified over ALL meta-train classes with a separate wide head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.algorithms.base import Algorithm, Params, TaskStats, accuracy
from metarun.episodes import Episode
from metarun.tokens import trim_padding


class SupervisedBaseline(Algorithm):
    learns_head = False  # the N-way head is only used after pre-training

    def __init__(self, *args, pretrain: bool = True, **kwargs) -> None:
        kwargs.setdefault("head_init", "random")
        super().__init__(*args, meta_trains=pretrain, **kwargs)
        width = self.model.head.in_features
        like = next(self.model.parameters())
        head = nn.Linear(width, self.n_train_classes or 1).to(like.device, like.dtype)
        self.pretrain_head = {"pretrain_head.weight": head.weight, "pretrain_head.bias": head.bias}

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
        labels = episode.class_ids[torch.cat([episode.support_y, episode.query_y])]
        features = self.logits(params, tokens, features_only=True)
        logits = F.linear(
            features, self.pretrain_head["pretrain_head.weight"], self.pretrain_head["pretrain_head.bias"]
        )
        loss = F.cross_entropy(logits, labels)
        names = self.meta_learned_names(params)
        wrt = {**{n: params[n] for n in names}, **self.pretrain_head}
        grads = torch.autograd.grad(loss, list(wrt.values()))
        return dict(zip(wrt, grads)), TaskStats(loss_after=loss.item(), acc_after=accuracy(logits, labels))

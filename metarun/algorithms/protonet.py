"""Prototypical networks (Snell et al., 2017): classify a query by its distance to each class's mean support
embedding. No inner loop: meta-training shapes the embedding itself.

Euclidean: -||f - c_k||^2 = 2 c_k.f - ||c_k||^2 - ||f||^2, and the last term is the same for every class, so
the prototypes become an ordinary linear head (weight 2c_k, bias -||c_k||^2) with the same softmax.
Cosine: prototype_scale * cos(f, c_k) is a linear head (weight scale * c_k/||c_k||) on normalised features.
Either way the one evaluation path (adapt, then score with the model) serves ProtoNet too.
`meta_train=false` with cosine distance is the frozen-encoder `prototypes` baseline.

`transductive_steps` > 0 refines the prototypes at test time with the task's unlabelled texts (its query set):
soft k-means (Ren et al., 2018), each step moving every prototype to the mean of its support examples and of the
unlabelled ones weighted by the current head's probabilities. Meta-training stays inductive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from metarun.algorithms.base import AlgoConfig, Algorithm, Params, TaskStats
from metarun.algorithms.heads import HEAD, class_means, cosine_prototype_head, head_logits
from metarun.episodes import Episode
from metarun.features import by_length
from metarun.schema import schema, setting


@schema("algo", "protonet")
@dataclass
class ProtoNetConfig(AlgoConfig):
    _target_: str = "metarun.algorithms.ProtoNet"
    meta_train: bool = True
    distance: str = setting("euclidean", choices=("euclidean", "cosine"))
    prototype_scale: float = setting(10.0, above=0.0)  # cosine only: the softmax temperature
    # at validation and test: soft k-means steps that refine the prototypes with the query texts (transductive)
    transductive_steps: int = setting(0, least=0)


class ProtoNet(Algorithm):
    """Adapting only writes the head (the prototypes), so with algo.outer_scope=top the layers below are read from
    a table."""

    schema: ClassVar[type] = ProtoNetConfig
    test_time_settings: ClassVar[tuple[str, ...]] = ("transductive_steps",)  # prototypes refined on the queries

    def __init__(self, model, **settings) -> None:
        super().__init__(model, **settings)
        s = self.settings
        self.distance, self.prototype_scale, self.transductive_steps = (
            s["distance"], s["prototype_scale"], s["transductive_steps"])  # fmt: skip

    @property
    def meta_trains(self) -> bool:
        return self.settings["meta_train"]

    @property
    def transductive(self) -> bool:
        return self.transductive_steps > 0

    @property
    def any_n_way(self) -> bool:
        return True  # one prototype per class of the support set, however many (task.meta_train_way)

    def logits(self, params: Params, tokens: torch.Tensor, features_only: bool = False) -> torch.Tensor:
        if self.distance == "euclidean":
            return super().logits(params, tokens, features_only)
        features = F.normalize(super().logits(params, tokens, features_only=True), dim=-1)
        return features if features_only else head_logits(params, features)

    def adapt(
        self, params: Params, tokens: torch.Tensor, labels: torch.Tensor, unlabelled: torch.Tensor | None = None
    ) -> Params:
        features, n_way = self.logits(params, tokens, features_only=True), int(labels.max()) + 1
        head = self.prototype_head(class_means(features, labels, n_way))
        if self.transductive and unlabelled is not None and len(unlabelled):
            extra = torch.stack(by_length(lambda batch: self.logits(params, batch, features_only=True), unlabelled))
            with torch.no_grad():
                head = self.refined_head(head, features.detach(), labels, extra)
        return {**params, **head}

    def prototype_head(self, centres: torch.Tensor) -> Params:
        """The nearest-prototype classifier of class centres [N, d] as a linear head (see the module's note)."""
        if self.distance == "cosine":
            return dict(zip(HEAD, cosine_prototype_head(centres, self.prototype_scale)))
        return {HEAD[0]: 2 * centres, HEAD[1]: -(centres**2).sum(1)}

    def refined_head(
        self, head: Params, features: torch.Tensor, labels: torch.Tensor, unlabelled: torch.Tensor
    ) -> Params:
        """`transductive_steps` of soft k-means: support examples count fully for their class, each unlabelled one
        for every class by its probability under the current head."""
        members = F.one_hot(labels, len(head[HEAD[1]])).to(features.dtype)
        for _ in range(self.transductive_steps):
            soft = head_logits(head, unlabelled).softmax(-1)
            centres = (members.T @ features + soft.T @ unlabelled) / (members.sum(0) + soft.sum(0)).unsqueeze(1)
            head = self.prototype_head(centres)
        return head

    def meta_gradient(
        self, params: Params, episode: Episode, outer_step: int | None = None
    ) -> tuple[Params, TaskStats]:
        adapted = self.adapt(params, episode.support_x, episode.support_y)
        query_logits = self.logits(adapted, episode.query_x)
        loss = self.objective.loss(query_logits, episode.query_y)
        names = self.meta_learned_names(params)
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        return dict(zip(names, grads)), TaskStats(
            loss_after=loss.item(), acc_after=self.objective.quick_score(query_logits, episode.query_y)
        )

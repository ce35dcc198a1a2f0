"""Prototypical networks (Snell et al., 2017): classify a query by its squared distance to each class's
mean support embedding. No inner loop: meta-training shapes the embedding itself.

-||f - c_k||^2 = 2 c_k.f - ||c_k||^2 - ||f||^2, and the last term is the same for every class, so the
prototypes become an ordinary linear head (weight 2c_k, bias -||c_k||^2) with the same softmax: the one
evaluation path (adapt, then score with the model) serves ProtoNet too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metarun.algorithms.base import Algorithm, Params, TaskStats, accuracy, encoder_names
from metarun.episodes import Episode


class ProtoNet(Algorithm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, inner_steps=0, eval_inner_steps=0, **kwargs)

    def prototypes(self, params: Params, tokens: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
        """[N, d] mean support embedding of each class."""
        features = self.logits(params, tokens, features_only=True)
        return torch.zeros(n_way, features.shape[1], dtype=features.dtype, device=features.device).index_add(
            0, labels, features
        ) / torch.bincount(labels, minlength=n_way).unsqueeze(1).to(features.dtype)

    def adapt(self, params: Params, tokens: torch.Tensor, labels: torch.Tensor) -> Params:
        centres = self.prototypes(params, tokens, labels, params["head.weight"].shape[0])
        return {**params, "head.weight": 2 * centres, "head.bias": -(centres**2).sum(1)}

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, TaskStats]:
        adapted = self.adapt(params, episode.support_x, episode.support_y)
        query_logits = self.logits(adapted, episode.query_x)
        loss = F.cross_entropy(query_logits, episode.query_y)
        names = encoder_names(params)  # the prototype head replaces the model's
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        return dict(zip(names, grads)), TaskStats(
            loss_after=loss.item(), acc_after=accuracy(query_logits, episode.query_y)
        )

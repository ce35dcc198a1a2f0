"""Reptile (Nichol et al., 2018): theta <- theta + eps * mean_i(theta'_i - theta).

theta'_i is theta after k inner steps on task i. The loop's outer optimizer applies the pseudo-gradient
theta - theta'_i (averaged over the meta-batch); with SGD at learning rate eps that is exactly Reptile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from metarun.algorithms.adapting import GradientAlgorithm, InnerLoopAlgoConfig
from metarun.algorithms.base import OptimizerConfig, Params, TaskStats
from metarun.algorithms.batched import over_tasks, sgd_steps, task_start, task_stats
from metarun.episodes import Episode
from metarun.errors import UserError
from metarun.schema import schema


@schema("algo", "reptile")
@dataclass
class ReptileConfig(InnerLoopAlgoConfig):
    _target_: str = "metarun.algorithms.Reptile"
    # epsilon, the interpolation theta + eps * (theta' - theta): plain SGD at lr eps on theta - theta'
    outer_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("torch.optim.SGD", lr=0.1))


class Reptile(GradientAlgorithm):
    schema: ClassVar[type] = ReptileConfig

    @property
    def can_batch_tasks(self) -> bool:
        return True

    def __init__(self, model, **settings) -> None:
        super().__init__(model, **settings)
        still = sorted(set(self.meta_learned_names(dict(self.model.named_parameters()))) - set(self.inner_names))
        if still:
            raise UserError(
                f"algo.inner_scope={self.inner_scope!r} with algo.outer_scope={self.outer_scope!r} does not work with "
                f"Reptile: its update is theta' - theta, and parameters the inner loop does not move (e.g. "
                f"{still[0]}) would never learn; use the same scope for both, or algo.inner_scope=all."
            )

    def meta_gradient(
        self, params: Params, episode: Episode, outer_step: int | None = None
    ) -> tuple[Params, TaskStats]:
        start = self.initial_params(params, episode.support_x, episode.support_y)
        fast, losses = self.inner_loop(start, episode.support_x, episode.support_y, self.inner_steps)
        pseudo_grads = {n: params[n].detach() - fast[n].detach() for n in self.meta_learned_names(params)}
        if not self.diagnostic_scores:  # the update never looks at the query set: scoring it is for the logs only
            return pseudo_grads, TaskStats(loss_after=None, acc_after=None, inner_losses=losses)
        with torch.no_grad():
            query_logits = self.logits(fast, episode.query_x)
        return pseudo_grads, self.query_stats(start, query_logits, episode, losses)

    def batched_meta_gradient(
        self, params: Params, episodes: list[Episode], outer_step: int | None = None
    ) -> tuple[Params, list[TaskStats]]:
        names = self.meta_learned_names(params)

        def task(base, support_x, support_y, query_x, query_y):
            fast, inner = sgd_steps(
                self, task_start(self, base, support_x, support_y), support_x, support_y, self.inner_steps
            )
            scored = (self.logits(fast, query_x),) if self.diagnostic_scores else ()
            return {n: base[n] - fast[n] for n in names}, inner, *scored

        pseudo_grads, inner, *logits = over_tasks(task, episodes, {n: p.detach() for n, p in params.items()})
        if logits:
            stats = task_stats(self, params, logits[0], inner, episodes)
        else:
            stats = [TaskStats(loss_after=None, acc_after=None, inner_losses=losses.tolist()) for losses in inner]
        return {n: g.mean(0) for n, g in pseudo_grads.items()}, stats

"""MAML (Finn et al., 2017) and its first-order approximation.

Meta-loss for one task: L_query(theta') with theta' = inner SGD steps from theta on the support set.
Second order differentiates through the inner steps; first order takes dL_query/dtheta' as the gradient.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import grad, grad_and_value

from metarun.algorithms.adapting import GradientAlgorithm, InnerLoopAlgoConfig
from metarun.algorithms.base import Params, TaskStats
from metarun.algorithms.inner import Adam
from metarun.algorithms.batched import over_tasks, sgd_steps, task_start, task_stats
from metarun.episodes import Episode
from metarun.errors import UserError
from metarun.schema import schema, setting
from metarun.torch_workarounds import twice_differentiable_attention


@schema("algo", "maml")
@dataclass
class MAMLConfig(InnerLoopAlgoConfig):
    _target_: str = "metarun.algorithms.MAML"
    first_order: bool = False
    # store (fastest) | recompute (inner-step graphs rebuilt in the backward pass: far less memory)
    memory: str = setting("store", choices=("store", "recompute"))


class MAML(GradientAlgorithm):
    schema: ClassVar[type] = MAMLConfig

    def __init__(self, model, **settings) -> None:
        super().__init__(model, **settings)
        self.first_order, self.memory = self.settings["first_order"], self.settings["memory"]
        if not self.first_order and isinstance(self.inner_optimizer, Adam):
            raise UserError(
                "algo.inner_optimizer=adam cannot be differentiated through by second-order MAML; use "
                "algo.inner_optimizer=sgd, or algo=fomaml."
            )
        if self.memory == "recompute" and self.inner_scope != "all":
            raise UserError(
                f"algo.memory=recompute needs algo.inner_scope=all, not {self.inner_scope!r}; a partial inner loop "
                "is already lighter, use algo.memory=store."
            )

    @property
    def can_batch_tasks(self) -> bool:
        return self.settings["memory"] == "store"  # recompute keeps its own per-task backward

    def meta_gradient(
        self, params: Params, episode: Episode, outer_step: int | None = None
    ) -> tuple[Params, TaskStats]:
        second_order = not self.first_order
        # recompute differentiates twice only inside its own backward, which picks the kernel itself
        twice = second_order and self.memory == "store"
        with twice_differentiable_attention() if twice else contextlib.nullcontext():
            start = self.initial_params(params, episode.support_x, episode.support_y)  # Proto-MAML: features too
            fast, losses = self.inner_loop(
                start,
                episode.support_x,
                episode.support_y,
                self.inner_steps,
                create_graph=second_order,
                recompute=self.memory == "recompute",
            )
            query_logits = self.logits(fast, episode.query_x)
        query_loss = self.objective.loss(query_logits, episode.query_y)
        # first order: the query gradient at the adapted weights stands in for the meta-gradient
        wrt = params if second_order else fast
        names = self.meta_learned_names(params)
        wrt = {**{n: wrt[n] for n in names}, **self.extra_parameters()}  # a learned inner rule's tensors too
        grads = torch.autograd.grad(query_loss, list(wrt.values()), allow_unused=True)
        return dict(zip(wrt, grads)), self.query_stats(start, query_logits, episode, losses)

    def batched_meta_gradient(
        self, params: Params, episodes: list[Episode], outer_step: int | None = None
    ) -> tuple[Params, list[TaskStats]]:
        names = self.meta_learned_names(params)
        base = {n: p.detach() for n, p in params.items()}

        def query_loss(fast: Params, query_x, query_y):
            logits = self.logits(fast, query_x)
            return self.objective.loss(logits, query_y), logits

        if self.first_order:

            def task(base, support_x, support_y, query_x, query_y):
                fast, inner = sgd_steps(
                    self, task_start(self, base, support_x, support_y), support_x, support_y, self.inner_steps
                )
                grads, (_, logits) = grad_and_value(query_loss, has_aux=True)(fast, query_x, query_y)
                return {n: grads[n] for n in names}, logits, inner

            grads, logits, inner = over_tasks(task, episodes, base)
            return {n: g.mean(0) for n, g in grads.items()}, task_stats(self, params, logits, inner, episodes)

        def task(meta, base, support_x, support_y, query_x, query_y):
            start = task_start(self, {**base, **meta}, support_x, support_y)
            fast, inner = sgd_steps(self, start, support_x, support_y, self.inner_steps)
            loss, logits = query_loss(fast, query_x, query_y)
            return loss, (logits, inner)

        def mean_loss(meta: Params):
            losses, aux = over_tasks(task, episodes, meta, base)
            return losses.mean(), aux

        grads, (logits, inner) = grad(mean_loss, has_aux=True)({n: base[n] for n in names})
        return grads, task_stats(self, params, logits, inner, episodes)

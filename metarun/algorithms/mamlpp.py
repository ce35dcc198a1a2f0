"""MAML++ (Antoniou et al., 2019, "How to train your MAML"), without its batch-norm items (there is none here):

- LSLR: a learned inner learning rate per parameter tensor and per inner step;
- MSL: the meta-loss is the query loss after every inner step, weighted; the weights start equal and move to the
  last step over `msl_steps` outer steps, after which only the last step counts;
- DA: first order for the first `first_order_steps` outer steps, second order after them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from metarun.algorithms.base import Params, TaskStats
from metarun.algorithms.inner import SGD, PerStepSGD
from metarun.algorithms.maml import MAML, MAMLConfig
from metarun.episodes import Episode
from metarun.errors import UserError
from metarun.schema import schema, setting
from metarun.torch_workarounds import twice_differentiable_attention


def step_weights(steps: int, outer_step: int | None, msl_steps: int) -> torch.Tensor:
    """MSL's weight of the query loss after each inner step, as in the authors' code: 1/K each at first, the
    non-final ones decaying linearly to 0.03/K over `msl_steps` while the last gains what they lose; then the
    last step alone (also outside meta-training, `outer_step` None)."""
    if outer_step is None or outer_step > msl_steps or steps == 1:
        return torch.eye(steps)[-1]
    decay = outer_step / (steps * msl_steps)
    floor = 0.03 / steps
    weights = torch.full((steps,), 1.0 / steps)
    weights[:-1] = torch.clamp(weights[:-1] - decay, min=floor)
    weights[-1] = min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


@schema("algo", "mamlpp")
@dataclass
class MAMLppConfig(MAMLConfig):
    _target_: str = "metarun.algorithms.MAMLpp"
    msl_steps: int = setting(100, least=0)  # outer steps over which the multi-step loss moves to the last step
    first_order_steps: int = setting(50, least=0)  # outer steps of first order before second order (DA)


class MAMLpp(MAML):
    schema: ClassVar[type] = MAMLppConfig

    def __init__(self, model, **settings) -> None:
        super().__init__(model, **settings)
        if self.memory == "recompute" or not isinstance(self.inner_optimizer, SGD):
            raise UserError("algo=mamlpp learns its own per-step SGD rates: it needs algo.inner_optimizer=sgd and "
                            "algo.memory=store.")  # fmt: skip
        if self.inner_steps < 1:
            raise UserError(f"algo=mamlpp needs algo.inner_steps of at least 1, not {self.inner_steps}: its meta-loss "
                            "is the query loss after the inner steps.")  # fmt: skip
        self.msl_steps, self.first_order_steps = self.settings["msl_steps"], self.settings["first_order_steps"]
        like = next(self.model.parameters())  # the rates take the model's dtype and device
        rates = torch.full((self.inner_steps,), self.inner_lr, dtype=like.dtype, device=like.device)
        self.lrs = {n: nn.Parameter(rates.clone()) for n in self.inner_names}
        self.inner_optimizer = PerStepSGD(self.lrs)  # its rates are this algorithm's extra_parameters()

    @property
    def can_batch_tasks(self) -> bool:
        return False  # its per-step losses and rates: its own loop

    def second_order_at(self, outer_step: int | None) -> bool:
        """DA: first order while `outer_step` <= first_order_steps (and always with first_order=true)."""
        return not self.first_order and (outer_step is None or outer_step > self.first_order_steps)

    def meta_gradient(
        self, params: Params, episode: Episode, outer_step: int | None = None
    ) -> tuple[Params, TaskStats]:
        second_order = self.second_order_at(outer_step)
        weights = step_weights(self.inner_steps, outer_step, self.msl_steps)
        with twice_differentiable_attention() if second_order else contextlib.nullcontext():
            start = self.initial_params(params, episode.support_x, episode.support_y)
            fast, state = {n: start[n] for n in self.inner_names}, self.inner_optimizer.init(start)
            meta_loss, leaves, inner_losses = 0.0, [], []
            for k in range(self.inner_steps):
                if not second_order:  # first order: each step starts from a leaf, so no graph spans two steps
                    fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
                    leaves.append(fast)
                support_loss = self.objective.loss(self.logits({**start, **fast}, episode.support_x), episode.support_y)
                grads = torch.autograd.grad(support_loss, list(fast.values()), create_graph=second_order)
                fast, state = self.inner_optimizer.update(fast, dict(zip(fast, grads)), state)
                inner_losses.append(support_loss.item())
                if weights[k] > 0:  # MSL: the query loss after this step, weighted
                    query_logits = self.logits({**start, **fast}, episode.query_x)
                    meta_loss = meta_loss + weights[k] * self.objective.loss(query_logits, episode.query_y)
        names = self.meta_learned_names(params)
        if second_order:
            pairs = [(n, params[n]) for n in names]
        else:  # each step's query gradient at its own weights, summed per parameter; the rest at theta
            pairs = [(n, p) for leaf in leaves for n, p in leaf.items() if n in names]
            pairs += [(n, params[n]) for n in names if n not in self.inner_names]
        pairs += list(self.extra_parameters().items())
        meta_grads: Params = {}
        for (name, _), grad in zip(pairs, torch.autograd.grad(meta_loss, [p for _, p in pairs], allow_unused=True)):
            if grad is not None:
                meta_grads[name] = meta_grads[name] + grad if name in meta_grads else grad
        return meta_grads, self.query_stats(start, query_logits, episode, inner_losses)

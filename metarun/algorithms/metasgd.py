"""Meta-SGD (Li et al., 2017): MAML whose inner learning rate is a meta-learned tensor per parameter.

theta'_i = theta_i - alpha_i * dL_support/dtheta_i, elementwise; the outer loop trains theta and alpha together
through the differentiated inner loop (second order: a first-order inner loop would give alpha no gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from metarun.algorithms.heads import HEAD
from metarun.algorithms.inner import LearnedSGD
from metarun.algorithms.maml import MAML
from metarun.errors import UserError


def lr_shape(name: str, param: torch.Tensor) -> tuple[int, ...]:
    """One rate per element, except that the head's rows share theirs: its classes are permuted in every episode,
    and a row-independent rate adapts to any number of labels."""
    return (1, *param.shape[1:]) if name in HEAD else tuple(param.shape)


class MetaSGD(MAML):
    @property
    def can_batch_tasks(self) -> bool:
        return False  # the rates are shared by all tasks, and the batched path leaves them out

    def __init__(self, model, **settings) -> None:
        super().__init__(model, **settings)
        if self.first_order or self.memory == "recompute":
            raise UserError(
                "algo=metasgd learns its inner learning rates through the second-order inner loop: it needs "
                "algo.first_order=false and algo.memory=store."
            )
        params = dict(self.model.named_parameters())
        self.lrs = {n: nn.Parameter(torch.full(lr_shape(n, params[n]), self.inner_lr, dtype=params[n].dtype,
                                               device=params[n].device)) for n in self.inner_names}  # fmt: skip
        self.inner_optimizer = LearnedSGD(self.lrs)  # its rates are this algorithm's extra_parameters()

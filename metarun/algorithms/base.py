"""The interface every algorithm shares: its settings (a schema, the one source of their defaults), the model and
what meta-training updates at what rate, the forward pass (from a feature table where one is read), and the calls
the loop and evaluation make: `meta_gradient`, `batched_meta_gradient`, `adapt`.

Parameters are plain dicts of tensors run through `torch.func.functional_call`, so fast weights are explicit values:
differentiable (MAML), detached (first-order, Reptile) or fresh (baselines). Algorithms that adapt with gradient
steps build on `GradientAlgorithm` (adapting.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from omegaconf import MISSING
from torch import nn
from torch.func import functional_call

from metarun.algorithms.heads import HEAD, head_logits
from metarun.algorithms.inner import LR_PREFIX
from metarun.algorithms.scopes import SCOPES, outer_parameter_groups, scope_names
from metarun.episodes import Episode
from metarun.errors import UserError
from metarun.features import FeatureTable
from metarun.objectives import Classification, Objective
from metarun.schema import defaults, setting

Params = dict[str, torch.Tensor]


@dataclass
class OptimizerConfig:
    """The outer optimizer as a partial target: metarun calls it with the tensors meta-training updates."""

    _target_: str = "torch.optim.Adam"  # algo/outer_optimizer=adam|sgd picks it
    _partial_: bool = True
    lr: float = setting(3.0e-3, above=0.0)


@dataclass
class AlgoConfig:
    _target_: str = MISSING
    outer_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    outer_scope: str = setting("all", choices=SCOPES)  # what meta-training updates
    top_layers: int = setting(2, least=0)  # k for the "top" scopes
    # the outer rate of the heads (a learned N-way head and its learned inner rates, finetune's pre-training head);
    # null: outer_optimizer.lr
    head_lr: Optional[float] = setting(None, above=0.0)


@dataclass
class TaskStats:
    """What one task's meta-gradient computation saw: query loss/accuracy before and after adaptation."""

    loss_after: float | None  # None: the query was not scored (Reptile without train.diagnostic_scores)
    acc_after: float | None  # also None for a rating, whose loss is its squared error
    loss_before: float | None = None
    acc_before: float | None = None
    inner_losses: list[float] = field(default_factory=list)

    @property
    def watched_loss(self) -> float:
        """What the loop checks for divergence: the query loss after adaptation, else the last support loss."""
        if self.loss_after is not None:
            return self.loss_after
        return self.inner_losses[-1] if self.inner_losses else 0.0


class Algorithm:
    """An algorithm built from its settings (`schema`'s fields, as keywords; what is not given takes the schema's
    default) and what the run knows: the model, the number of meta-training classes, whether to score forwards only
    for the logs (train.diagnostic_scores), the autocast dtype of the model's forward (device.precision), and the
    task family's objective (labels or ratings: the loss every inner and outer step minimises).

    What it declares for the rest of metarun: `schema`; `test_time_settings`, the settings metarun-eval may change
    in a trained run; `saved_sizes`, what sizes its own tensors when a checkpoint is loaded; and its flags, all
    read-only properties of its settings (`self.settings`, set first): `meta_trains`, `learns_head`, `transductive`,
    `any_n_way`, `can_batch_tasks`.
    """

    schema: ClassVar[type] = AlgoConfig
    test_time_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, *, n_train_classes: int | None = None, diagnostic_scores: bool = False,
                 autocast_dtype: torch.dtype | None = None, objective: Objective = Classification(),
                 **settings: Any) -> None:  # fmt: skip
        self.settings = defaults(self.schema, settings)
        self.objective = objective  # the task family's: what the outputs are, the loss, the scores
        self.model, self.n_train_classes = model, n_train_classes
        self.diagnostic_scores, self.autocast_dtype = diagnostic_scores, autocast_dtype
        self.outer_optimizer, self.head_lr = self.settings["outer_optimizer"], self.settings["head_lr"]
        self.outer_scope, self.top_layers = self.settings["outer_scope"], self.settings["top_layers"]
        self.cache: FeatureTable | None = None  # see `metarun.algorithms.caching`
        self.batched = False  # whether the loop calls `batched_meta_gradient`
        self.inner_names = list(HEAD)  # what adapting to a task changes
        self.outer_names = scope_names(model, self.outer_scope, self.top_layers, "algo.outer_scope")
        if self.meta_trains and not self.meta_learned_names(dict(model.named_parameters())):
            how = f" with head_init={self.settings['head_init']!r}" if "head_init" in self.settings else ""
            raise UserError(
                f"algo.outer_scope={self.outer_scope!r} leaves nothing to meta-learn: its only parameters are the "
                f"head, which {type(self).__name__}{how} rebuilds for every task. Use algo.outer_scope=all or top"
                + (", or algo.head_init=learned." if how else ".")
            )

    @classmethod
    def saved_sizes(cls, extra: Params) -> dict[str, int]:
        """Constructor arguments that size this algorithm's own tensors, read from a checkpoint's `extra` tensors."""
        return {}

    @property
    def meta_trains(self) -> bool:
        """False makes the loop skip meta-training (the `scratch` and `prototypes` baselines)."""
        return True

    @property
    def learns_head(self) -> bool:
        """Whether the outer loop trains the N-way head (not when it is reset or rebuilt for every task)."""
        return False

    @property
    def transductive(self) -> bool:
        """Whether `adapt` reads the texts it is to classify (its `unlabelled` argument)."""
        return False

    @property
    def any_n_way(self) -> bool:
        """Whether meta-training episodes may have another number of classes than the model's head."""
        return False

    @property
    def can_batch_tasks(self) -> bool:
        """Whether this algorithm has `batched_meta_gradient`."""
        return False

    def meta_learned_names(self, params: Params) -> list[str]:
        """The parameters the outer loop trains: those in `outer_scope`, less a head that is reset for every task."""
        return [n for n in self.outer_names if n in params and (self.learns_head or n not in HEAD)]

    def adapted_names(self) -> set[str]:
        """The parameters test-time adaptation changes."""
        return set(HEAD)

    def trained_names(self) -> set[str]:
        """The parameters meta-training changes: the outer loop's, the inner loop's and the head."""
        return {*HEAD, *self.inner_names, *self.meta_learned_names(dict(self.model.named_parameters()))}

    def hidden_states(self, params: Params, tokens: torch.Tensor, layers: int) -> torch.Tensor:
        """The model's hidden states after its first `layers` layers (what a `FeatureTable` keeps)."""
        with self._autocast(tokens):
            return functional_call(self.model, params, (tokens,), {"until_layer": layers})

    def pooled_features(self, params: Params, tokens: torch.Tensor) -> torch.Tensor:
        """The model's pooled encoder output, below its decision layer (what a `FeatureTable` with `pooled` keeps)."""
        if self.cache is not None and self.cache.pooled:  # kept already (meta-training's, while a validation runs)
            return self.cache(tokens)
        with self._autocast(tokens):
            return functional_call(self.model, params, (tokens,), {"pooled_only": True})

    def _autocast(self, tokens: torch.Tensor) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(tokens.device.type, dtype=self.autocast_dtype)

    def logits(self, params: Params, tokens: torch.Tensor, features_only: bool = False) -> torch.Tensor:
        if self.cache is not None and self.cache.layers is None and not self.cache.pooled:
            features = self.cache(tokens)
        elif self.cache is not None and self.cache.layers is None:  # the decision layer runs on cached pooled output
            decision = {n.removeprefix("decision."): p for n, p in params.items() if n.startswith("decision.")}
            features = functional_call(self.model.decision, decision, (self.cache(tokens).float(),))
        else:
            start = {} if self.cache is None else {"hidden": self.cache(tokens), "from_layer": self.cache.layers}
            with self._autocast(tokens):
                features = functional_call(self.model, params, (tokens,), {"features_only": True, **start})
            # the head, losses and prototypes stay in float32, as on the cached path
            features = features if self.autocast_dtype is None else features.float()
        return features if features_only else head_logits(params, features)

    def extra_parameters(self) -> dict[str, nn.Parameter]:  # trained besides the model's, checkpointed with it
        return {}

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the outer optimizer holds: the model's and `extra_parameters()`."""
        return {**dict(self.model.named_parameters()), **self.extra_parameters()}

    def head_names(self) -> set[str]:
        """The trained tensors that `head_lr` sets the outer rate of: the head and a learned inner rule's rates for
        it (Adam moves a rate started at `inner_lr`, e.g. 5, by about the outer rate per step)."""
        return {*HEAD, *(LR_PREFIX + n for n in HEAD)}

    def outer_parameter_groups(self) -> list[dict]:  # with `head_lr` the heads apart (see `scopes`)
        return outer_parameter_groups(self.trained_tensors(), self.head_names(), self.head_lr)

    def meta_gradient(self, params: Params, episode: Episode, outer_step: int | None = None
                      ) -> tuple[Params, TaskStats]:  # fmt: skip
        """One task's contribution to outer step `outer_step` (from 1; None outside meta-training): the gradient
        of each meta-learned tensor, the model's and `extra_parameters()`, and the task's stats."""
        raise NotImplementedError

    def batched_meta_gradient(self, params: Params, episodes: list[Episode], outer_step: int | None = None
                              ) -> tuple[Params, list[TaskStats]]:  # fmt: skip
        """The whole meta-batch's mean meta-gradient at once (algorithms whose `can_batch_tasks` is true)."""
        raise NotImplementedError

    def adapt(self, params: Params, tokens: torch.Tensor, labels: torch.Tensor,
              unlabelled: torch.Tensor | None = None) -> Params:  # fmt: skip
        """Evaluation-time adaptation on a support set (`tokens`, `labels`); `unlabelled` are the task's texts to
        classify, which only a transductive algorithm reads."""
        raise NotImplementedError

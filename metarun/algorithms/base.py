"""The interface every algorithm shares, and the one inner loop they all adapt with.

Parameters are plain dicts of tensors run through `torch.func.functional_call`, so fast weights are
explicit values: differentiable (MAML), detached (first-order, Reptile) or fresh (baselines).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.algorithms.heads import HEAD, head_logits, starting_head
from metarun.algorithms.inner import INNER_OPTIMIZERS, LR_PREFIX, SGD, gradient_steps
from metarun.algorithms.recompute import recomputed_sgd_steps
from metarun.episodes import Episode
from metarun.features import FeatureTable
from metarun.errors import UserError

Params = dict[str, torch.Tensor]
DEFAULT_OUTER_OPTIMIZER = functools.partial(torch.optim.Adam, lr=3e-3)  # the schema's default (metarun.config)


@dataclass
class TaskStats:
    """What one task's meta-gradient computation saw: query loss/accuracy before and after adaptation."""

    loss_after: float | None  # None: the query was not scored (Reptile without train.diagnostic_scores)
    acc_after: float | None
    loss_before: float | None = None
    acc_before: float | None = None
    inner_losses: list[float] = field(default_factory=list)

    @property
    def watched_loss(self) -> float:
        """What the loop checks for divergence: the query loss after adaptation, else the last support loss."""
        if self.loss_after is not None:
            return self.loss_after
        return self.inner_losses[-1] if self.inner_losses else 0.0


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


def batches_tasks(batch_tasks: str | bool, device_type: str) -> bool:
    """`algo.batch_tasks` read for a device, where batching is possible: true always, auto on CUDA only, false never."""
    return batch_tasks is True or (batch_tasks == "auto" and device_type == "cuda")


class Algorithm:
    """Public surface: `meta_gradient` (one task's contribution to the outer step), `adapt`, the tensors it
    meta-learns besides the model's (`extra_parameters`), and for the algorithms that can batch their tasks,
    `batched_meta_gradient` (the whole meta-batch's mean at once). Its flags are constructor arguments:

    - `meta_trains`: False makes the loop skip meta-training (the `scratch` and `prototypes` baselines);
    - `can_batch_tasks`: whether this algorithm has `batched_meta_gradient` (given by the subclass);
    - `diagnostic_scores`: forwards that only feed the logs, per task (train.diagnostic_scores);
    - `autocast_dtype`: the model's forward under autocast to this dtype (device.precision).

    `outer_optimizer` builds the optimizer of meta-training from the tensors it updates (a partial target, like
    `functools.partial(torch.optim.Adam, lr=3e-3)`), with the heads at `head_lr` when it is given (see
    `outer_parameter_groups`); `n_train_classes` is the number of meta-training classes.
    """

    any_n_way = False  # whether meta-training episodes may have another number of classes than the model's head
    transductive = False  # whether `adapt` reads the texts it is to classify (its `unlabelled` argument)

    def __init__(
        self,
        model: nn.Module,
        inner_steps: int = 5,
        inner_lr: float = 0.1,
        eval_inner_steps: int = 10,
        inner_optimizer: str = "sgd",
        head_init: str = "learned",
        inner_scope: str = "all",
        outer_scope: str = "all",
        top_layers: int = 2,
        prototype_scale: float = 10.0,
        batch_tasks: str | bool = "auto",
        outer_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] = DEFAULT_OUTER_OPTIMIZER,
        head_lr: float | None = None,
        n_train_classes: int | None = None,
        meta_trains: bool = True,
        can_batch_tasks: bool = False,
        diagnostic_scores: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.outer_optimizer, self.n_train_classes = model, outer_optimizer, n_train_classes
        self.head_lr = head_lr
        self.meta_trains, self.can_batch_tasks = meta_trains, can_batch_tasks
        self.diagnostic_scores, self.autocast_dtype = diagnostic_scores, autocast_dtype
        self.cache: FeatureTable | None = None  # see `cached`
        self.inner_steps, self.inner_lr, self.eval_inner_steps = inner_steps, inner_lr, eval_inner_steps
        self.inner_optimizer = INNER_OPTIMIZERS[inner_optimizer](inner_lr)  # a learned rule replaces it (Meta-SGD)
        self.head_init, self.prototype_scale = head_init, prototype_scale
        self.inner_scope, self.outer_scope, self.top_layers = inner_scope, outer_scope, top_layers
        names = [n for n, _ in model.named_parameters()]
        self.inner_names, self.outer_names = self.scope_names(names, inner_scope), self.scope_names(names, outer_scope)
        self.batched = self._batching(batch_tasks, next(self.model.parameters()).device.type)
        if self.meta_trains and not self.meta_learned_names(dict(model.named_parameters())):
            raise UserError(
                f"algo.outer_scope={outer_scope!r} leaves nothing to meta-learn: its only parameters are the head, "
                f"which {type(self).__name__} with head_init={head_init!r} rebuilds for every task. Use "
                "algo.outer_scope=all or top."
            )

    def scope_names(self, names: list[str], scope: str) -> list[str]:
        """The parameter names a scope covers; "top" starts at the first of the top `top_layers` layers and
        keeps everything registered after it (a final norm, the head)."""
        if scope == "all":
            return list(names)
        if scope == "head":
            return list(HEAD)
        layers = self.model.layer_prefixes()
        if not 0 <= self.top_layers <= len(layers):
            raise UserError(
                f"algo.top_layers={self.top_layers} is not valid for a model with {len(layers)} layers; "
                f"use 0 to {len(layers)}."
            )
        if self.top_layers == 0:
            first = names.index(HEAD[0])
        else:
            first = next(i for i, n in enumerate(names) if n.startswith(layers[-self.top_layers]))
        return names[first:]

    def _batching(self, batch_tasks: str | bool, device_type: str) -> bool:
        """Whether the loop calls `batched_meta_gradient` for a model on `device_type`: asked for (or auto on CUDA)
        and possible."""
        possible = (
            self.can_batch_tasks
            and isinstance(self.inner_optimizer, SGD)
            and self.inner_scope == "all"
            and self.model.batches_tasks
        )
        if batch_tasks is True and not possible:
            raise UserError(
                f"algo.batch_tasks=true is not available for {type(self).__name__} with "
                f"inner_optimizer={type(self.inner_optimizer).__name__.lower()}, inner_scope={self.inner_scope}; "
                "batching needs maml, fomaml or reptile with sgd inner steps over all parameters of a metarun-built "
                "model (and algo.memory=store); use algo.batch_tasks=false."
            )
        return possible and batches_tasks(batch_tasks, device_type)

    @property
    def learns_head(self) -> bool:
        """Whether the outer loop trains the N-way head (not when it is reset or rebuilt for every task)."""
        return self.head_init == "learned"

    def meta_learned_names(self, params: Params) -> list[str]:
        """The parameters the outer loop trains: those in `outer_scope`, less a head that is reset for every task."""
        return [n for n in self.outer_names if n in params and (self.learns_head or n not in HEAD)]

    def batched_meta_gradient(
        self, params: Params, episodes: list[Episode], outer_step: int | None = None
    ) -> tuple[Params, list[TaskStats]]:
        raise NotImplementedError

    def adapted_names(self) -> set[str]:
        """The parameters test-time adaptation changes: the head, and the inner scope's when it takes steps."""
        return {*HEAD, *(self.inner_names if self.eval_inner_steps else [])}

    def trained_names(self) -> set[str]:
        """The parameters meta-training changes: the outer loop's, the inner loop's and the head."""
        return {*HEAD, *self.inner_names, *self.meta_learned_names(dict(self.model.named_parameters()))}

    def untouched_layers(self, changing: set[str]) -> int:
        """How many of the model's bottom layers (with the embeddings below them) no name in `changing` is in."""
        names = [n for n, _ in self.model.named_parameters()]
        lowest = min(names.index(n) for n in changing if n in names)
        layers = self.model.layer_prefixes()
        ends = [max(i for i, n in enumerate(names) if n.startswith(prefix)) for prefix in layers]
        return sum(1 for end in ends if end < lowest)  # 0 when an embedding changes: it comes first

    def cached(self, params: Params, token_batches: list[torch.Tensor], changing: set[str]) -> Algorithm:
        """A copy of this algorithm that reads, for the texts of `token_batches`, what changing only `changing`
        leaves alone from a table computed once (the features, or the hidden states below the lowest changing layer;
        no dropout there); this algorithm itself when every layer changes."""
        if changing <= set(HEAD):
            return self.reading_cache(FeatureTable(self, params, token_batches))
        layers = self.untouched_layers(changing)
        return self.reading_cache(FeatureTable(self, params, token_batches, layers)) if layers else self

    def reading_cache(self, table: FeatureTable) -> Algorithm:
        """A copy of this algorithm whose `logits` start from `table` (see `cached`); this one is unchanged."""
        reader = copy.copy(self)
        reader.cache, reader.batched = table, False  # a table lookup does not run under vmap
        return reader

    def hidden_states(self, params: Params, tokens: torch.Tensor, layers: int) -> torch.Tensor:
        """The model's hidden states after its first `layers` layers (what a `FeatureTable` keeps)."""
        with self._autocast(tokens):
            return functional_call(self.model, params, (tokens,), {"until_layer": layers})

    def _autocast(self, tokens: torch.Tensor) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(tokens.device.type, dtype=self.autocast_dtype)

    def logits(self, params: Params, tokens: torch.Tensor, features_only: bool = False) -> torch.Tensor:
        if self.cache is not None and self.cache.layers is None:
            features = self.cache(tokens)
        else:
            start = {} if self.cache is None else {"hidden": self.cache(tokens), "from_layer": self.cache.layers}
            with self._autocast(tokens):
                features = functional_call(self.model, params, (tokens,), {"features_only": True, **start})
            # the head, losses and prototypes stay in float32, as on the cached path
            features = features if self.autocast_dtype is None else features.float()
        return features if features_only else head_logits(params, features)

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters the outer optimizer trains besides the model's: a learned inner rule's rates (none by
        default), checkpointed and loaded with the model."""
        return {LR_PREFIX + n: lr for n, lr in self.inner_optimizer.learned.items()}

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the outer optimizer holds: the model's and `extra_parameters()`."""
        return {**dict(self.model.named_parameters()), **self.extra_parameters()}

    def head_names(self) -> set[str]:
        """The trained tensors that `head_lr` sets the outer rate of: the head and a learned inner rule's rates for
        it (Adam moves a rate started at `inner_lr`, e.g. 5, by about the outer rate per step)."""
        return {*HEAD, *(LR_PREFIX + n for n in HEAD)}

    def outer_parameter_groups(self) -> list[dict]:
        """The outer optimizer's parameter groups: everything at its own rate, or with `head_lr` the heads apart,
        so that a fresh head can move faster than pretrained layers."""
        trained = self.trained_tensors()
        heads = self.head_names() if self.head_lr is not None else set()
        groups = [{"params": [p for n, p in trained.items() if n not in heads]}]
        if heads:
            groups.append({"params": [p for n, p in trained.items() if n in heads], "lr": self.head_lr})
        return groups

    def meta_gradient(
        self, params: Params, episode: Episode, outer_step: int | None = None
    ) -> tuple[Params, TaskStats]:
        """One task's contribution to outer step `outer_step` (from 1; None outside meta-training): the gradient
        of each meta-learned tensor, the model's and `extra_parameters()`, and the task's stats."""
        raise NotImplementedError

    def initial_params(self, params: Params, tokens: torch.Tensor, labels: torch.Tensor) -> Params:
        """The weights a task starts adapting from: the head as `head_init` says, built from the support set
        (`tokens`, `labels`) for prototypes, differentiably, so second order sees through it."""
        head = starting_head(
            self.head_init, params, lambda: self.logits(params, tokens, features_only=True), labels,
            self.prototype_scale,
        )  # fmt: skip
        if head is None:
            return params
        if self.head_init == "prototypes":
            # fresh aliases of the encoder's tensors: the inner steps' gradients must be partial in them, not
            # also flow through the head they built (the outer gradient still reaches both)
            aliases = {n: p.view_as(p) for n, p in params.items()}
            return {**aliases, HEAD[0]: head[0], HEAD[1]: head[1].requires_grad_()}
        return {**params, HEAD[0]: head[0].requires_grad_(), HEAD[1]: head[1].requires_grad_()}

    def inner_loop(
        self,
        params: Params,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        steps: int,
        create_graph: bool = False,
        recompute: bool = False,
    ) -> tuple[Params, list[float]]:
        """`steps` gradient steps on (tokens, labels); differentiable through every step iff `create_graph`.

        Without `create_graph` the fast weights are detached leaves after every step, so no graph
        builds up across steps and the returned weights are ready for a first-order gradient.
        With `recompute` (SGD only) each differentiable step keeps its weights, not its graph.
        With `inner_scope="head"` only the head adapts, on features computed once (ANIL); with "top" only
        the top layers and what is above them adapt, the rest stays at `params`.
        """
        if self.inner_scope == "head":
            features = self.logits(params, tokens, features_only=True)
            features = features if create_graph else features.detach()
            head, losses = gradient_steps(
                self.inner_optimizer,
                {n: params[n] for n in HEAD},
                lambda p: head_logits(p, features),
                labels,
                steps,
                create_graph,
            )
            return {**params, **head}, losses
        if create_graph and recompute:
            support_loss = lambda p: F.cross_entropy(self.logits(p, tokens), labels)  # noqa: E731
            return recomputed_sgd_steps(support_loss, self.inner_lr, params, steps)
        adapted, losses = gradient_steps(  # "all" or "top": the rest stays at `params`
            self.inner_optimizer,
            {n: params[n] for n in self.inner_names},
            lambda p: self.logits({**params, **p}, tokens),
            labels,
            steps,
            create_graph,
        )
        return {**params, **adapted}, losses

    def adapt(
        self, params: Params, tokens: torch.Tensor, labels: torch.Tensor, unlabelled: torch.Tensor | None = None
    ) -> Params:
        """Evaluation-time adaptation on a support set: `eval_inner_steps` steps, no graph kept. `unlabelled` are
        the task's texts to classify, which only a transductive algorithm reads (ProtoNet's transductive_steps)."""
        start = self.initial_params(params, tokens, labels)
        adapted, _ = self.inner_loop(start, tokens, labels, self.eval_inner_steps)
        return {n: p.detach() for n, p in adapted.items()}

    def query_stats(self, start: Params, end_logits: torch.Tensor, episode: Episode, losses: list[float]) -> TaskStats:
        """Query loss and accuracy at the adapted weights (given as logits), and at the starting weights when
        asked and the head is meta-learned (a zeroed or fresh head scores chance there)."""
        end_logits = end_logits.detach()
        stats = TaskStats(
            loss_after=F.cross_entropy(end_logits, episode.query_y).item(),
            acc_after=accuracy(end_logits, episode.query_y),
            inner_losses=losses,
        )
        if self.diagnostic_scores and self.learns_head:
            with torch.no_grad():
                start_logits = self.logits(start, episode.query_x)
            stats.loss_before = F.cross_entropy(start_logits, episode.query_y).item()
            stats.acc_before = accuracy(start_logits, episode.query_y)
        return stats

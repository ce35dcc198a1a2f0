"""Algorithms that adapt to a task with gradient steps on its support set (MAML and its kin, Reptile, the
fine-tuning baselines): where a task's head starts, the one inner loop they all adapt with, and test-time `adapt`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from metarun.algorithms.base import AlgoConfig, Algorithm, Params, TaskStats
from metarun.algorithms.heads import HEAD, head_logits, starting_head
from metarun.algorithms.inner import INNER_OPTIMIZERS, LR_PREFIX, SGD, gradient_steps
from metarun.algorithms.recompute import recomputed_sgd_steps
from metarun.algorithms.scopes import SCOPES, scope_names
from metarun.episodes import Episode
from metarun.errors import UserError
from metarun.schema import setting

HEAD_INITS = ("learned", "zero", "random", "prototypes")  # prototypes: Proto-MAML (Triantafillou et al., 2020)


@dataclass
class AdaptingAlgoConfig(AlgoConfig):
    """Algorithms that adapt to a task with gradient steps on its support set."""

    inner_lr: float = setting(0.5, above=0.0)
    eval_inner_steps: int = setting(5, least=0)  # steps when adapting at validation and test
    inner_optimizer: str = setting("sgd", choices=("sgd", "adam"))
    inner_scope: str = setting("all", choices=SCOPES)  # what adapts per task; head is ANIL
    head_init: str = setting("zero", choices=HEAD_INITS)
    prototype_scale: float = setting(10.0, above=0.0)  # head_init=prototypes: the head is scale * unit class means


@dataclass
class InnerLoopAlgoConfig(AdaptingAlgoConfig):
    """Algorithms that also adapt during meta-training (MAML, Reptile)."""

    # steps on the support set during meta-training; the start is meta-learned for exactly this many, so with a large
    # inner_lr (steps that overshoot) give eval_inner_steps the same number
    inner_steps: int = setting(3, least=0)
    # auto: batched over tasks with torch.func.vmap on CUDA, task by task on CPU
    batch_tasks: Any = setting("auto", choices=("auto", True, False))


def batches_tasks(batch_tasks: str | bool, device_type: str) -> bool:
    """`algo.batch_tasks` read for a device, where batching is possible: true always, auto on CUDA only, false never."""
    return batch_tasks is True or (batch_tasks == "auto" and device_type == "cuda")


class GradientAlgorithm(Algorithm):
    """An `Algorithm` whose `adapt` is `eval_inner_steps` gradient steps of `inner_optimizer` on the support set,
    over the `inner_scope`'s parameters, from the head `head_init` says."""

    schema: ClassVar[type] = AdaptingAlgoConfig
    test_time_settings: ClassVar[tuple[str, ...]] = ("eval_inner_steps",)  # gradient steps on the support set

    def __init__(self, model: nn.Module, **settings: Any) -> None:
        super().__init__(model, **settings)
        s = self.settings
        self.inner_lr, self.eval_inner_steps = s["inner_lr"], s["eval_inner_steps"]
        self.inner_steps = s.get("inner_steps", 0)  # none outside meta-training for the baselines
        self.inner_optimizer = INNER_OPTIMIZERS[s["inner_optimizer"]](self.inner_lr)  # a learned rule replaces it
        self.head_init, self.prototype_scale, self.inner_scope = s["head_init"], s["prototype_scale"], s["inner_scope"]
        self.inner_names = scope_names(model, self.inner_scope, self.top_layers, "algo.inner_scope")
        # batch_tasks is a setting of the algorithms that adapt in meta-training; the others never batch
        self.batched = self._batching(s.get("batch_tasks", False), next(model.parameters()).device.type)

    def _batching(self, batch_tasks: str | bool, device_type: str) -> bool:
        """Whether the loop calls `batched_meta_gradient` for a model on `device_type`: asked for (or auto on CUDA)
        and possible."""
        possible = (self.can_batch_tasks and isinstance(self.inner_optimizer, SGD) and self.inner_scope == "all"
                    and self.model.batches_tasks)  # fmt: skip
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
        return self.settings["head_init"] == "learned"

    def adapted_names(self) -> set[str]:
        """The head, and the inner scope's parameters when test-time adaptation takes steps."""
        return {*HEAD, *(self.inner_names if self.eval_inner_steps else [])}

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        """A learned inner rule's rates (Meta-SGD, MAML++)."""
        return {LR_PREFIX + n: lr for n, lr in self.inner_optimizer.learned.items()}

    def initial_params(self, params: Params, tokens: torch.Tensor, labels: torch.Tensor) -> Params:
        """The weights a task starts adapting from: the head as `head_init` says, built from the support set
        (`tokens`, `labels`) for prototypes, differentiably, so second order sees through it."""
        features = lambda: self.logits(params, tokens, features_only=True)  # noqa: E731
        head = starting_head(self.head_init, params, features, labels, self.prototype_scale)
        if head is None:
            return params
        if self.head_init == "prototypes":
            # fresh aliases of the encoder's tensors: the inner steps' gradients must be partial in them, not
            # also flow through the head they built (the outer gradient still reaches both)
            aliases = {n: p.view_as(p) for n, p in params.items()}
            return {**aliases, HEAD[0]: head[0], HEAD[1]: head[1].requires_grad_()}
        return {**params, HEAD[0]: head[0].requires_grad_(), HEAD[1]: head[1].requires_grad_()}

    def inner_loop(self, params: Params, tokens: torch.Tensor, labels: torch.Tensor, steps: int,
                   create_graph: bool = False, recompute: bool = False) -> tuple[Params, list[float]]:  # fmt: skip
        """`steps` gradient steps on (tokens, labels); differentiable through every step iff `create_graph`.

        Without `create_graph` the fast weights are detached leaves after every step, so no graph builds up across
        steps and the returned weights are ready for a first-order gradient. With `recompute` (SGD only) each
        differentiable step keeps its weights, not its graph. With `inner_scope="head"` only the head adapts, on
        features computed once (ANIL); with "top" only the top layers and what is above them adapt.
        """
        if self.inner_scope == "head":
            features = self.logits(params, tokens, features_only=True)
            features = features if create_graph else features.detach()
            head, losses = gradient_steps(self.inner_optimizer, {n: params[n] for n in HEAD},
                                          lambda p: self.objective.loss(head_logits(p, features), labels), steps,
                                          create_graph)  # fmt: skip
            return {**params, **head}, losses
        if create_graph and recompute:
            support_loss = lambda p: self.objective.loss(self.logits(p, tokens), labels)  # noqa: E731
            return recomputed_sgd_steps(support_loss, self.inner_lr, params, steps)
        adapted, losses = gradient_steps(  # "all", "top" or a lora scope: the rest stays at `params`
            self.inner_optimizer, {n: params[n] for n in self.inner_names},
            lambda p: self.objective.loss(self.logits({**params, **p}, tokens), labels), steps, create_graph,
        )  # fmt: skip
        return {**params, **adapted}, losses

    def adapt(self, params: Params, tokens: torch.Tensor, labels: torch.Tensor,
              unlabelled: torch.Tensor | None = None) -> Params:  # fmt: skip
        """`eval_inner_steps` steps on the support set, no graph kept."""
        start = self.initial_params(params, tokens, labels)
        adapted, _ = self.inner_loop(start, tokens, labels, self.eval_inner_steps)
        return {n: p.detach() for n, p in adapted.items()}

    def query_stats(self, start: Params, end_logits: torch.Tensor, episode: Episode, losses: list[float]) -> TaskStats:
        """Query loss and accuracy at the adapted weights (given as logits), and at the starting weights when
        asked and the head is meta-learned (a zeroed or fresh head scores chance there)."""
        end_logits = end_logits.detach()
        score = self.objective
        stats = TaskStats(loss_after=score.loss(end_logits, episode.query_y).item(),
                          acc_after=score.quick_score(end_logits, episode.query_y), inner_losses=losses)  # fmt: skip
        if self.diagnostic_scores and self.learns_head:
            with torch.no_grad():
                start_logits = self.logits(start, episode.query_x)
            stats.loss_before = score.loss(start_logits, episode.query_y).item()
            stats.acc_before = score.quick_score(start_logits, episode.query_y)
        return stats

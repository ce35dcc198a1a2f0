"""Where a task's N-way head starts: meta-learned, zeroed, freshly drawn, or the cosine prototypes of its support
set (Proto-MAML, Triantafillou et al., 2020). One implementation serves the task-by-task path and `vmap`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from metarun.errors import UserError

Params = dict[str, torch.Tensor]
HEAD = ("head.weight", "head.bias")


def class_means(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """[N, d] mean feature of each class (written with a comparison, not index_add, so it also runs under vmap)."""
    members = (labels.unsqueeze(1) == torch.arange(n_way, device=labels.device)).to(features.dtype)
    return members.T @ features / members.sum(0).unsqueeze(1)


def cosine_prototype_head(centres: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest-prototype-by-cosine classifier of class centres [N, d] as a linear head: weight
    scale * c_k / ||c_k||, bias 0."""
    weight = scale * F.normalize(centres, dim=-1)
    return weight, torch.zeros_like(weight[:, 0])


def head_logits(params: Params, features: torch.Tensor) -> torch.Tensor:
    """The N-way head applied to features computed outside the model (every model here is head(features))."""
    return F.linear(features, params[HEAD[0]], params[HEAD[1]])


def starting_head(
    head_init: str, params: Params, features: Callable[[], torch.Tensor], labels: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A task's first head (weight, bias), or None to keep the meta-learned one; `features()` gives the support
    set's features (only prototypes ask for them). Random draws follow nn.Linear's initialisation."""
    if head_init == "learned":
        return None
    weight, bias = params[HEAD[0]].detach(), params[HEAD[1]].detach()
    if head_init == "zero":
        return torch.zeros_like(weight), torch.zeros_like(bias)
    if head_init == "prototypes":
        return cosine_prototype_head(class_means(features(), labels, weight.shape[0]), scale)
    bound = weight.shape[1] ** -0.5
    # drawn by the CPU's generator on every device: a seed gives the same head on the GPU as on the CPU
    draw = lambda t: (2 * torch.rand(t.shape, dtype=t.dtype) - 1).to(t.device) * bound  # noqa: E731
    return draw(weight), draw(bias)


def head_of_size(params: Params, n_labels: int, learns_head: bool) -> Params:
    """`params` with an `n_labels`-way head: algorithms that build each task's head (zero, random, prototypes) read
    only its shape; a meta-learned head has the run's n_way outputs and no other."""
    weight = params[HEAD[0]]
    if n_labels == weight.shape[0]:
        return params
    if learns_head:
        raise UserError(
            f"This run meta-learned a {weight.shape[0]}-way head (algo.head_init=learned), so it adapts to "
            f"{weight.shape[0]} labels only, not {n_labels}. Give examples of {weight.shape[0]} labels, or use a "
            "run whose head starts fresh for each task (head_init=zero, random or prototypes; protonet)."
        )
    head = torch.zeros(n_labels, weight.shape[1], dtype=weight.dtype, device=weight.device)
    return {**params, HEAD[0]: head, HEAD[1]: head[:, 0].clone()}

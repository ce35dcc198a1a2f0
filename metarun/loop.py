"""The one training loop: every algorithm's outer optimisation runs through `meta_train`.

Each outer step samples a meta-batch of episodes, asks the algorithm for each task's (meta-)gradient,
averages them onto the shared parameters and takes one outer optimizer step.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from metarun.algorithms import Algorithm, Params, TaskStats
from metarun.checkpoint import Checkpoints
from metarun.episodes import Episode, EpisodeSampler
from metarun.errors import UserError
from metarun.evaluation import EvalResult, evaluate
from metarun.reporting import RunReporter

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class TrainSettings:
    outer_steps: int
    meta_batch_size: int
    outer_optimizer: str
    outer_lr: float
    lr_schedule: str  # "constant" or "cosine"
    grad_clip: float | None
    val_interval: int

    def __post_init__(self) -> None:
        for key in ("train.outer_steps", "train.meta_batch_size", "eval.val_interval"):
            value = getattr(self, key.split(".")[1])
            if value < 1:
                raise UserError(f"{key}={value} is not valid; it must be a whole number of at least 1.")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserError(f"train.lr_schedule={self.lr_schedule!r} is not valid; use 'constant' or 'cosine'.")


def build_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise UserError(f"algo.outer_optimizer={name!r} is not valid; use one of {sorted(OPTIMIZERS)}.")
    return OPTIMIZERS[name](params, lr=lr)


def accumulate_meta_gradient(algorithm: Algorithm, params: Params, episodes: list[Episode]) -> list[TaskStats]:
    """Set each trained tensor's `.grad` (the model's and the algorithm's own) to the mean of the tasks'
    (meta-)gradients; returns the tasks' stats."""
    trained = {**params, **algorithm.extra_parameters()}
    if algorithm.batched:
        mean, stats = algorithm.batched_meta_gradient(params, episodes)
        for name, param in trained.items():
            param.grad = mean.get(name)
        return stats
    summed: Params = {}
    stats = []
    for episode in episodes:
        grads, task_stats = algorithm.meta_gradient(params, episode)
        stats.append(task_stats)
        for name, grad in grads.items():
            if grad is not None:
                summed[name] = summed[name] + grad if name in summed else grad
    for name, param in trained.items():
        param.grad = summed[name] / len(episodes) if name in summed else None
    return stats


@dataclass
class TrainResult:
    best: EvalResult | None = None  # the best validation result
    step_seconds: list[float] = field(default_factory=list)  # each outer step's wall time, validation excluded


def meta_train(
    algorithm: Algorithm,
    sampler: EpisodeSampler,
    val_episodes: list[Episode],
    settings: TrainSettings,
    reporter: RunReporter,
    checkpoints: Checkpoints,
    rng: random.Random,
    device: torch.device,
) -> TrainResult:
    """Meta-train for `outer_steps`, validating every `val_interval` steps."""
    params: Params = dict(algorithm.model.named_parameters())
    trained = [*params.values(), *algorithm.extra_parameters().values()]
    optimizer = build_optimizer(settings.outer_optimizer, trained, settings.outer_lr)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.outer_steps)
        if settings.lr_schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    )
    result = TrainResult()
    algorithm.model.train()
    for step in range(1, settings.outer_steps + 1):
        started = time.perf_counter()
        episodes = [sampler.sample(rng).to(device) for _ in range(settings.meta_batch_size)]
        stats = accumulate_meta_gradient(algorithm, params, episodes)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            trained, settings.grad_clip if settings.grad_clip else float("inf")
        ).item()
        loss = sum(s.watched_loss for s in stats) / len(stats)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise UserError(
                f"Meta-training diverged at outer step {step} (loss {loss}, gradient norm {grad_norm}) and "
                "stopped before applying that step. The last good checkpoint "
                f"(step {checkpoints.last_step or 'none yet'}) and the logs are kept in {checkpoints.folder.parent}. "
                "Lower algo.outer_lr or algo.inner_lr."
            )
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        reporter.log_train(step, stats, lr, grad_norm)
        if device.type == "cuda":
            torch.cuda.synchronize()  # kernels still queued belong to this step's time
        result.step_seconds.append(time.perf_counter() - started)
        if step % settings.val_interval == 0 or step == settings.outer_steps:
            val = evaluate(algorithm, params, val_episodes, device)
            reporter.log_validation(step, val)
            is_best = result.best is None or val.mean > result.best.mean
            result.best = val if is_best else result.best
            checkpoints.save(step, algorithm, optimizer, val, is_best)
    return result

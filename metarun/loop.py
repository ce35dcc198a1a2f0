"""The one training loop: every algorithm's outer optimisation runs through `meta_train`.

Each outer step samples a meta-batch of episodes, asks the algorithm for each task's (meta-)gradient,
averages them onto the shared parameters and takes one outer optimizer step.
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LRScheduler

from metarun.algorithms import Algorithm, Params, TaskStats
from metarun.checkpoint import Checkpoints, TrainState
from metarun.distributed import Ranks
from metarun.episodes import Episode, EpisodeSampler
from metarun.errors import RunInterrupted, UserError, stop_signals
from metarun import progress
from metarun.algorithms.caching import cached
from metarun.evaluation import eval_mode, evaluate_scores
from metarun.reporter import RunReporter


@dataclass(frozen=True)
class TrainSettings:
    outer_steps: int
    meta_batch_size: int
    grad_clip: float | None
    val_interval: int
    select_by: str  # the validation score that picks the best step (a name of config.METRICS)
    average_from: int | None = None  # checkpoint averaging from this step on (config.TrainConfig)


def build_outer_optimizer(
    algorithm: Algorithm, lr_schedule: Callable[[torch.optim.Optimizer], LRScheduler]
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """The algorithm's outer optimizer over the model's and its own tensors, and `lr_schedule` of it."""
    optimizer = algorithm.outer_optimizer(algorithm.outer_parameter_groups())
    return optimizer, lr_schedule(optimizer)


def accumulate_meta_gradient(
    algorithm: Algorithm, params: Params, episodes: list[Episode], outer_step: int | None = None
) -> list[TaskStats]:
    """Set each trained tensor's `.grad` (the model's and the algorithm's own) to the mean of the tasks'
    (meta-)gradients at `outer_step` (schedules such as MAML++'s read it); returns the tasks' stats.

    Under torchrun each process computes its share of `episodes` and an all-reduce sums the shares."""
    ranks = Ranks.current()
    share = ranks.share(episodes)
    trained = {**params, **algorithm.extra_parameters()}  # `params` as given: no walk over the model's modules per step
    count = len(episodes)
    if algorithm.batched:
        mean, stats = algorithm.batched_meta_gradient(params, share, outer_step)
        # the share's sum; alone, the mean as it came (a single process's numbers stay as they were)
        weight, count = (len(share), count) if ranks.world > 1 else (1, 1)
        summed = {n: g * weight for n, g in mean.items() if g is not None}
    else:
        summed, stats = {}, []
        for episode in share:
            grads, task_stats = algorithm.meta_gradient(params, episode, outer_step)
            stats.append(task_stats)
            for name, grad in grads.items():
                if grad is not None:
                    summed[name] = summed[name] + grad if name in summed else grad
    ranks.sum(list(summed.values()))  # every rank computes the same names: one algorithm, one scope
    for name, param in trained.items():
        param.grad = summed[name] / count if name in summed else None
    return ranks.gather(stats)


def add_to_average(state: TrainState, weights: Params) -> None:
    """Fold this validation step's weights into the running mean `state.average` (checkpoint averaging)."""
    state.averaged += 1
    with torch.no_grad():
        before = state.average or {n: torch.zeros_like(w) for n, w in weights.items()}
        state.average = {n: before[n] + (w - before[n]) / state.averaged for n, w in weights.items()}


class StopRequests:
    """Ctrl-C or SIGTERM during meta-training: the current outer step finishes, `last.pt` is saved at it and the run
    stops; a second signal stops at once (the previous checkpoint stays)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int, frame) -> None:
        """The signal handler (see `stop_signals`)."""
        if self.signum is not None:
            raise RunInterrupted(signum, f"Stopped at once by a second {signal.Signals(signum).name}.")
        self.signum = signum


def meta_training_view(algorithm: Algorithm, sampler: EpisodeSampler, val_episodes: list[Episode],
                       device: torch.device) -> Algorithm:  # fmt: skip
    """The algorithm as meta-training runs it: reading what meta-training leaves unchanged (the frozen lower layers'
    hidden states, or a frozen encoder's features) from a table of every meta-train and validation text."""
    tokens = [sampler.tokens, *(x for e in val_episodes for x in (e.support_x, e.query_x))]
    tokens = [t.to(device) for t in tokens]
    with eval_mode(algorithm.model):  # the frozen part is computed once, without dropout
        view = cached(algorithm, dict(algorithm.model.named_parameters()), tokens, algorithm.trained_names(), keep=True)
    if view is not algorithm:
        layers = view.cache.layers
        part = "first layer" if layers == 1 else f"first {layers} layers"
        part = ("pooled output" if view.cache.pooled else "features") if layers is None else part
        progress.console.print(f"Meta-training leaves the encoder's {part} unchanged: read from that table "
                               "from now on.")  # fmt: skip
    return view


def meta_train(
    algorithm: Algorithm,
    sampler: EpisodeSampler,
    val_episodes: list[Episode],
    settings: TrainSettings,
    reporter: RunReporter,
    checkpoints: Checkpoints,
    rng: random.Random,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    schedule: LRScheduler,
    state: TrainState,
) -> TrainState:
    """Meta-train from the step after `state.step` to `outer_steps`, validating and checkpointing every
    `val_interval` steps; a `state` restored from `last.pt` (with the optimizer, schedule and `rng`) goes on exactly
    as if the run had never stopped."""
    params: Params = dict(algorithm.model.named_parameters())
    trained = list(algorithm.trained_tensors().values())
    algorithm.model.train()
    stop = StopRequests()
    before, entered = state.train_seconds, time.perf_counter()
    with stop_signals(stop.request):
        for step in range(state.step + 1, settings.outer_steps + 1):
            started = time.perf_counter()
            episodes = [sampler.sample(rng).to(device) for _ in range(settings.meta_batch_size)]
            stats = accumulate_meta_gradient(algorithm, params, episodes, step)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                trained, settings.grad_clip if settings.grad_clip else float("inf")
            ).item()
            loss = sum(s.watched_loss for s in stats) / len(stats)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise UserError(
                    f"Meta-training diverged at outer step {step} (loss {loss}, gradient norm {grad_norm}) and "
                    "stopped before applying that step. The last good checkpoint "
                    f"(step {checkpoints.last_step or 'none yet'}) and the logs are kept in "
                    f"{checkpoints.folder.parent}. Lower algo.outer_optimizer.lr or algo.inner_lr."
                )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            reporter.log_train(step, stats, lr, grad_norm)
            if device.type == "cuda":
                torch.cuda.synchronize()  # kernels still queued belong to this step's time
            state.step_seconds.append(time.perf_counter() - started)
            state.step, is_best = step, False
            validates = step % settings.val_interval == 0 or step == settings.outer_steps
            if validates:
                if settings.average_from is not None and step >= settings.average_from:
                    add_to_average(state, {n: params[n] for n in algorithm.meta_learned_names(params)})
                weights = params if state.average is None else {**params, **state.average}
                scores = evaluate_scores(algorithm, weights, val_episodes, device, advance=reporter.validating(step))
                reporter.log_validation(step, scores, settings.select_by)
                val = scores[settings.select_by]
                is_best = state.best is None or val.better_than(state.best, settings.select_by)
                if is_best:
                    state.best, state.best_step = val, step
            if Ranks.current().any(stop.signum is not None):  # every process stops after the same step
                stop.signum = stop.signum or signal.SIGTERM
            state.train_seconds = None if before is None else before + time.perf_counter() - entered
            if validates or stop.signum:
                checkpoints.save(algorithm, optimizer, schedule, rng, state, is_best)
            if stop.signum:
                raise RunInterrupted(
                    stop.signum,
                    f"Stopped by {signal.Signals(stop.signum).name} after outer step {step} of "
                    f"{settings.outer_steps}; {checkpoints.last_path} holds that step"
                    + (f", {checkpoints.best_path} the best validation (step {state.best_step})" if state.best_step
                       else "")
                    + f", and the logs are in {checkpoints.folder.parent}.",
                    run_folder=checkpoints.folder.parent,
                )  # fmt: skip
    return state

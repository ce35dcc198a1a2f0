"""`checkpoints/last.pt` and `checkpoints/best.pt`: written atomically, read only with `weights_only=True`, and
checked against their zip members' CRC-32 first.

`last.pt` holds everything an exact resume needs (weights, optimizer and schedule state, the step, the best
validation so far, every random generator's state); `best.pt` what using the model needs (weights, the step). Both
hold what a later load checks against: the run's config, its tokenizer and the checkpoint format.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

import metarun
from metarun.algorithms import Algorithm
from metarun.distributed import Ranks
from metarun.checkpoint_file import FORMAT, load_checkpoint
from metarun.errors import UserError
from metarun.results import flatten
from metarun.run_folder import write_atomically
from metarun.stats import EvalResult

USE = ("format", "metarun_version", "step", "model", "extra", "config", "tokenizer", "best", "best_step")  # best.pt
# settings a resumed run may change: they do not touch the maths of meta-training
RESUMABLE_CHANGES = ("train.resume", "train.keep_last", "debug", "device.name", "choices.device")


@dataclass
class TrainState:
    """Where meta-training stands: the last finished outer step and the best validation so far."""

    step: int = 0
    best: EvalResult | None = None
    best_step: int | None = None
    step_seconds: list[float] = field(default_factory=list)  # this process's outer steps, validation excluded
    average: dict[str, torch.Tensor] | None = None  # train.average_from: the mean of the weights validated so far
    averaged: int = 0  # how many validation steps' weights `average` holds
    train_seconds: float | None = 0.0  # meta-training's time up to `step`, resumes included; None: not known


def same_run_config(config: dict) -> dict:
    """The config that identifies a run, resumed or not (`train.resume` left out)."""
    return {**config, "train": {**config["train"], "resume": None}}


def setting_changes(before: dict, now: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) of each setting that differs between two configs, leaving out those a resume may change."""
    before, now = flatten(before), flatten(now)
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    return [(k, before.get(k), now.get(k)) for k in keys]


def check_same_settings(saved: dict, config: dict, path: Path) -> None:
    """Refuse to continue the run of checkpoint `saved` (read from `path`) under settings that change its maths."""
    changed = setting_changes(saved["config"], config)
    if changed:
        shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changed[:6])
        raise UserError(
            f"Cannot resume {path}: these settings differ from the run's own and would change its results: "
            f"{shown}{' ...' if len(changed) > 6 else ''}. Resume with the run's overrides (they are in "
            f"{path.parent.parent / '.hydra' / 'overrides.yaml'}), or start a new run."
        )


def stopped_run(folder: Path, config: dict) -> dict:
    """The stopped run's `last.pt` in `folder` as read, refused when `config` would change its maths."""
    last = folder / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)
    check_same_settings(saved, same_run_config(config), last)
    return saved


def restore_weights(algorithm: Algorithm, saved: dict) -> None:
    """The model's and the algorithm's own tensors from a checkpoint, onto the devices they live on."""
    algorithm.model.load_state_dict(saved["model"])
    with torch.no_grad():
        for name, param in algorithm.extra_parameters().items():
            param.copy_(saved["extra"][name])


def _interned(node):
    """Equal checkpoints give equal bytes: pickle writes a string once per object, so a resumed optimizer's own copy
    of "step" would otherwise differ, byte for byte, from the shared one of a run that never stopped."""
    if isinstance(node, str):
        return sys.intern(node)
    if isinstance(node, dict):
        return type(node)((_interned(k), _interned(v)) for k, v in node.items())
    if isinstance(node, (list, tuple)):
        return type(node)(_interned(v) for v in node)
    return node


class Checkpoints:
    def __init__(self, folder: Path, config: dict, tokenizer_json: str) -> None:
        self.folder = folder
        self.config = same_run_config(config)
        self.tokenizer_json = tokenizer_json
        self.best_step: int | None = None  # the step of the best.pt this run wrote; None: it wrote none
        self.last_step: int | None = None

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.folder / "last.pt"

    @property
    def clock_path(self) -> Path:
        return self.folder / "clock.json"

    def prepare(self, algorithm: Algorithm) -> None:
        """Before training: leftovers of a killed write are gone, and the disk has room for both checkpoints
        (weights plus Adam's two moments, with a copy in flight). Only rank 0 writes checkpoints."""
        if not Ranks.current().is_main:
            return
        for partial in self.folder.glob("*.partial"):
            partial.unlink()
        weights = sum(t.numel() * t.element_size() for t in algorithm.model.state_dict().values())
        needed, free = 9 * weights, shutil.disk_usage(self.folder).free
        if free < needed:
            raise UserError(
                f"{self.folder} has {free / 2**20:.0f} MB free, but this run's checkpoints need about "
                f"{needed / 2**20:.0f} MB: no space left for them. Free some space, or run on another disk ("
                "hydra.run.dir; a resumed run goes on in its own folder: move the whole folder there first)."
            )

    def save(self, algorithm: Algorithm, optimizer, schedule, rng: random.Random, state: TrainState,
             is_best: bool) -> None:  # fmt: skip
        """Called on every rank (each one's torch generator is kept); rank 0 writes."""
        ranks = Ranks.current()
        per_rank = ranks.gather([torch.get_rng_state()]) if ranks.world > 1 else []
        if ranks.is_main:
            version, internal, gauss = rng.getstate()
            payload = {
                "format": FORMAT,
                "metarun_version": metarun.__version__,
                "step": state.step,
                "model": algorithm.model.state_dict(),
                "extra": {n: p.detach() for n, p in algorithm.extra_parameters().items()},
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "best": None if state.best is None else vars(state.best),
                "best_step": state.best_step,
                "rng": {
                    "python": [version, list(internal), gauss],
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "torch_per_rank": per_rank,  # under torchrun: every process's generator, by rank
                },
                "config": self.config,
                "tokenizer": self.tokenizer_json,
            }
            payload["average"], payload["averaged"] = state.average, state.averaged
            if is_best:  # best first: a stop between the two leaves last.pt older
                # what using the model needs, not resuming (no optimizer state); with averaging the validated mean
                weights = payload["model"] if state.average is None else {**payload["model"], **state.average}
                self._write({**{k: payload[k] for k in USE}, "model": weights}, self.best_path)
            self._write(payload, self.last_path)
            clock = {"step": state.step, "train_seconds": state.train_seconds}  # kept apart: last.pt stays exact
            write_atomically(self.clock_path, json.dumps(clock).encode(), run_folder=self.folder.parent)
        # what was saved, known to every rank: load_best runs on all of them
        self.best_step = state.step if is_best else self.best_step
        self.last_step = state.step

    def _write(self, payload: dict, path: Path) -> None:
        buffer = io.BytesIO()
        torch.save(_interned(payload), buffer)
        write_atomically(path, buffer.getbuffer(), run_folder=self.folder.parent)

    def resume(self, saved: dict, algorithm: Algorithm, optimizer, schedule, rng: random.Random) -> TrainState:
        """Restore everything `save` wrote into `last.pt` (`saved`, read on the CPU, where random generator states
        live), after checking it belongs to this run's config and tokenizer."""
        self._check_same_run(saved)
        restore_weights(algorithm, saved)
        optimizer.load_state_dict(saved["optimizer"])  # moves its state to the parameters' device
        schedule.load_state_dict(saved["schedule"])
        version, internal, gauss = saved["rng"]["python"]
        rng.setstate((version, tuple(internal), gauss))
        ranks, per_rank = Ranks.current(), saved["rng"]["torch_per_rank"]
        if len(per_rank) != (ranks.world if ranks.world > 1 else 0):
            raise UserError(
                f"Cannot resume {self.last_path}: the run had {len(per_rank) or 1} process(es) and this one has "
                f"{ranks.world}, which would change its random draws. Resume with the same number of processes "
                "(torchrun --nproc_per_node)."
            )
        torch.set_rng_state(per_rank[ranks.rank] if per_rank else saved["rng"]["torch"])
        if saved["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        best = None if saved["best"] is None else EvalResult(**saved["best"])
        self.best_step, self.last_step = saved["best_step"], saved["step"]
        kept = {"average": saved.get("average"), "averaged": saved.get("averaged", 0),  # none in earlier versions
                "train_seconds": self._train_seconds(saved["step"])}  # fmt: skip
        return TrainState(saved["step"], best, saved["best_step"], **kept)

    def _train_seconds(self, step: int) -> float | None:
        """Meta-training's time up to `step`, as the clock file beside last.pt says; None when it says nothing."""
        try:
            clock = json.loads(self.clock_path.read_text())
        except (OSError, ValueError):  # a run of an earlier version, or a damaged file: the time is not known
            return None
        return clock.get("train_seconds") if clock.get("step") == step else None

    def _check_same_run(self, saved: dict) -> None:
        check_same_settings(saved, self.config, self.last_path)
        if saved["tokenizer"] != self.tokenizer_json:
            raise UserError(
                f"Cannot resume {self.last_path}: the tokenizer built from the data now differs from the one the run "
                "was trained with, so the data changed since. Resume with the same data, or start a new run."
            )

    def load_best(self, algorithm: Algorithm) -> int | None:
        """Restore the best weights this run wrote into the model; returns their step, None if it wrote none. Under
        torchrun rank 0 reads them and the others receive them."""
        if self.best_step is None:
            return None
        ranks = Ranks.current()
        if ranks.is_main:
            saved = load_checkpoint(self.best_path, next(algorithm.model.parameters()).device)
            if saved["step"] != self.best_step or setting_changes(saved["config"], self.config):
                raise UserError(
                    f"{self.best_path} holds step {saved['step']}, but this run's best was step {self.best_step}: "
                    "another process wrote into this run's folder. Start the run again in a folder of its own."
                )
            restore_weights(algorithm, saved)
        ranks.copy_from_main(list(algorithm.trained_tensors().values()))
        return self.best_step

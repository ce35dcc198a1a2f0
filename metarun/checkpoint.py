"""`checkpoints/last.pt` and `checkpoints/best.pt` (by validation accuracy), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from metarun.algorithms import Algorithm
from metarun.evaluation import EvalResult


class Checkpoints:
    def __init__(self, folder: Path, config: dict) -> None:
        self.folder, self.config = folder, config
        self.last_step: int | None = None

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    def save(
        self, step: int, algorithm: Algorithm, optimizer: torch.optim.Optimizer, val: EvalResult, is_best: bool
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "model": algorithm.model.state_dict(),
            "extra": {n: p.detach() for n, p in algorithm.extra_parameters().items()},
            "optimizer": optimizer.state_dict(),
            "val_acc": val.mean,
            "val_ci95": val.ci95,
            "config": self.config,
        }
        _atomic_save(state, self.folder / "last.pt")
        if is_best:
            _atomic_save(state, self.best_path)
        self.last_step = step

    def load_best(self, algorithm: Algorithm) -> int | None:
        """Restore the best weights into the algorithm's model; returns their step, None if none was saved."""
        if not self.best_path.is_file():
            return None
        state = torch.load(self.best_path, map_location=next(algorithm.model.parameters()).device)
        algorithm.model.load_state_dict(state["model"])
        with torch.no_grad():
            for name, param in algorithm.extra_parameters().items():
                param.copy_(state["extra"][name])
        return state["step"]


def _atomic_save(state: dict, path: Path) -> None:
    """Write beside the target, then rename: a crash mid-write never corrupts the last good file."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)

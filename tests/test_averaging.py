"""Checkpoint averaging (`train.average_from`): what is validated and kept is the mean of the weights at each
validation since that step, checked against the weights of runs that stopped at those steps; training is unchanged."""

import json

import pytest
import torch

from conftest import compose_config
from metarun.run import run

CONSTANT_LR = "lr_schedule=constant"  # a shorter run is then the start of a longer one


def trained(folder, steps: int, *overrides) -> tuple[dict, dict, dict]:
    """A run's last.pt, best.pt and metrics.json: the smoke budget (validating every 2 steps) for `steps` steps."""
    run(compose_config(CONSTANT_LR, f"train.outer_steps={steps}", *overrides), folder)
    load = lambda name: torch.load(folder / "checkpoints" / name, weights_only=True)  # noqa: E731
    return load("last.pt"), load("best.pt"), json.loads((folder / "metrics.json").read_text())


def test_the_kept_weights_are_the_mean_of_the_validated_ones(tmp_path):
    raw = {steps: trained(tmp_path / f"raw{steps}", steps)[0]["model"] for steps in (2, 4, 6)}
    last, best, metrics = trained(tmp_path / "averaged", 6, "train.average_from=1")
    assert all(torch.equal(last["model"][n], raw[6][n]) for n in raw[6])  # training itself is unchanged
    # every trained tensor; MAML's head starts at zero in each task, so it is not trained
    assert last["averaged"] == 3 and set(last["average"]) == set(raw[6]) - {"head.weight", "head.bias"}
    validated = [s for s in (2, 4, 6) if s <= metrics["best_step"]]
    for name, kept in best["model"].items():
        if name not in last["average"]:
            assert torch.equal(kept, raw[6][name]), name
            continue
        assert kept == pytest.approx(sum(raw[s][name] for s in validated) / len(validated), abs=1e-6), name
        assert last["average"][name] == pytest.approx(sum(raw[s][name] for s in (2, 4, 6)) / 3, abs=1e-6), name


def test_averaging_starts_at_its_step(tmp_path):
    last, _, _ = trained(tmp_path / "averaged", 6, "train.average_from=4")
    raw = {steps: trained(tmp_path / f"raw{steps}", steps)[0]["model"] for steps in (4, 6)}
    assert last["averaged"] == 2
    for name, mean in last["average"].items():
        assert mean == pytest.approx((raw[4][name] + raw[6][name]) / 2, abs=1e-6), name

"""Exact resume: a run stopped at any outer step and resumed ends exactly as if it had never stopped."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metarun import reporter
from metarun.errors import RunInterrupted, UserError
from metarun.run import run

from conftest import command, compose_config, smoke

# beyond SMOKE (which validates every 2 steps): 6 outer steps, to stop on and off a validation and before the
# first; dropout, as the torch generator's state must come back too
RESUMED = ("train.outer_steps=6", "model.dropout=0.2")
METARUN = str(Path(sys.executable).with_name("metarun"))


def config(*overrides):
    return compose_config(*RESUMED, *overrides)


def stop_at(monkeypatch, step: int, signum: int = signal.SIGINT) -> None:
    """Deliver a real signal while outer step `step` is being logged, as Ctrl-C would arrive mid-run."""
    log_train = reporter.RunReporter.log_train

    def log_and_signal(self, at, *args):
        log_train(self, at, *args)
        if at == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(reporter.RunReporter, "log_train", log_and_signal)


def artefacts(folder: Path) -> tuple[str, bytes, bytes]:
    checkpoints = folder / "checkpoints"
    return (
        (folder / "metrics.json").read_text(),
        (checkpoints / "best.pt").read_bytes(),
        (checkpoints / "last.pt").read_bytes(),
    )


@pytest.mark.parametrize("algo, stop", [("maml", 3), ("reptile", 4), ("finetune", 1), ("maml train.average_from=2", 5)])
def test_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch, algo, stop):
    """Stops off (3, 5) and on (4) a validation step, and before the first validation (1); with checkpoint averaging
    the running mean comes back too."""
    algo, *more = algo.split()
    run(config(f"algo={algo}", *more), tmp_path / "whole")
    stop_at(monkeypatch, stop)
    with pytest.raises(RunInterrupted) as stopped:
        run(config(f"algo={algo}", *more), tmp_path / "stopped")
    assert stopped.value.exit_code == 130 and f"after outer step {stop} of 6" in str(stopped.value)
    assert torch.load(tmp_path / "stopped/checkpoints/last.pt", weights_only=True)["step"] == stop
    assert not (tmp_path / "stopped/metrics.json").exists()
    monkeypatch.undo()
    run(config(f"algo={algo}", *more, f"train.resume={tmp_path / 'stopped'}"), tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()  # the resumed run writes into its own folder
    assert artefacts(tmp_path / "stopped") == artefacts(tmp_path / "whole")


def test_tensorboard_continues_at_the_resumed_step(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stop_at(monkeypatch, 3)
    with pytest.raises(RunInterrupted):
        run(config(), tmp_path)
    monkeypatch.undo()
    run(config(f"train.resume={tmp_path}"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    # in the order they were written: the two runs' event files sort by a per-process counter, as text (9 after 10)
    steps = lambda tag: [e.step for e in sorted(events.Scalars(tag), key=lambda e: e.wall_time)]  # noqa: E731
    assert steps("train/grad_norm") == [1, 2, 3, 4, 5, 6]
    assert steps("val/acc") == [2, 4, 6]


def test_resume_refuses_settings_that_change_the_maths(tmp_path, monkeypatch):
    stop_at(monkeypatch, 2)
    with pytest.raises(RunInterrupted):
        run(config(), tmp_path)
    monkeypatch.undo()
    kept = {name: (tmp_path / name).read_bytes() for name in ("tokenizer.json", "splits.json")}
    with pytest.raises(UserError, match=r"algo.inner_lr: 0.5 -> 0.1.*overrides.yaml"):
        run(config("algo.inner_lr=0.1", f"train.resume={tmp_path}"), tmp_path)
    with pytest.raises(UserError, match=r"task.split.seed: 0 -> 1"):
        run(config("task.split.seed=1", f"train.resume={tmp_path}"), tmp_path)
    assert kept == {name: (tmp_path / name).read_bytes() for name in kept}  # a refused resume writes nothing
    with pytest.raises(UserError, match=r"data.seed: 0 -> 1"):
        run(config("data.seed=1", f"train.resume={tmp_path}"), tmp_path)


def test_resume_refuses_data_that_changed_under_the_same_settings(tmp_path, monkeypatch):
    from metarun.data import generate_synthetic

    data = tmp_path / "data.jsonl"

    def write(seed):
        corpus = generate_synthetic(seed=seed, examples_per_class=20)
        rows = [json.dumps({"text": t, "label": y}) for t, y in zip(corpus.texts, corpus.labels)]
        data.write_text("\n".join(rows) + "\n")

    write(0)
    stop_at(monkeypatch, 2)
    with pytest.raises(RunInterrupted):
        run(config("data=local", f"data.files={data}"), tmp_path / "run")
    monkeypatch.undo()
    original = data.read_text()
    write(1)
    with pytest.raises(UserError, match="tokenizer built from the data now differs"):
        run(config("data=local", f"data.files={data}", f"train.resume={tmp_path / 'run'}"), tmp_path / "run")
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    rows = [json.loads(r) for r in original.splitlines()]
    test_row = next(i for i, r in enumerate(rows) if r["label"] in splits["test"])
    rows[test_row]["text"] += " rewritten"  # a meta-test row: the tokenizer (fitted on meta-train text) is the same
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"another data.json than the run wrote \(rows, classes or domains"):
        run(config("data=local", f"data.files={data}", f"train.resume={tmp_path / 'run'}"), tmp_path / "run")


def test_a_finished_run_resumed_after_a_crash_at_test_time_writes_its_metrics(tmp_path):
    run(config(), tmp_path / "whole")
    run(config(), tmp_path / "crashed")
    expected = artefacts(tmp_path / "crashed")
    (tmp_path / "crashed/metrics.json").unlink()  # as if the process died while testing
    run(config(f"train.resume={tmp_path / 'crashed'}"), tmp_path / "crashed")
    assert artefacts(tmp_path / "crashed") == expected == artefacts(tmp_path / "whole")


def test_corrupt_or_missing_checkpoints_are_named(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="has no checkpoints/last.pt to continue from"):
        run(config(f"train.resume={tmp_path / 'nothing'}"), tmp_path / "nothing")
    stop_at(monkeypatch, 2)
    with pytest.raises(RunInterrupted):
        run(config(), tmp_path / "run")
    monkeypatch.undo()
    last = tmp_path / "run/checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(UserError, match=r"last.pt is corrupt or truncated.*Delete it"):
        run(config(f"train.resume={tmp_path / 'run'}"), tmp_path / "run")


def _start(tmp_path, *args):
    return subprocess.Popen(
        [METARUN, *smoke(*RESUMED, "train.outer_steps=100000", f"hydra.run.dir={tmp_path}", *args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_save_the_step_and_print_the_resume_command(tmp_path, signum, code):
    process = _start(tmp_path)
    deadline = time.time() + 120
    while not (tmp_path / "checkpoints/last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    message = " ".join(stderr.split())
    assert f"Stopped by {signal.Signals(signum).name} after outer step" in message
    assert f"train.resume={tmp_path}" in message and "train.outer_steps=100000" in message
    step = int(message.split("after outer step ")[1].split()[0])
    assert torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["step"] == step
    assert not list((tmp_path / "checkpoints").glob("*.partial"))


def test_a_resumed_run_clears_what_a_killed_write_left(tmp_path, monkeypatch):
    stop_at(monkeypatch, 3)
    with pytest.raises(RunInterrupted):
        run(config(), tmp_path)
    monkeypatch.undo()
    (tmp_path / "checkpoints/last.pt.partial").write_bytes(b"")  # kill -9 in the middle of a write
    run(config(f"train.resume={tmp_path}"), tmp_path)
    assert not list((tmp_path / "checkpoints").glob("*.partial"))
    assert json.loads((tmp_path / "metrics.json").read_text())["best_step"] in (2, 4, 6)


def test_a_refused_resume_from_the_command_line_keeps_the_runs_own_config(tmp_path):
    base = smoke(*RESUMED)
    assert command("metarun", *base, f"hydra.run.dir={tmp_path}").returncode == 0
    overrides = (tmp_path / ".hydra/overrides.yaml").read_text()
    refused = command("metarun", *base, "algo.inner_lr=0.1", f"train.resume={tmp_path}")
    assert refused.returncode == 2 and "algo.inner_lr: 0.5 -> 0.1" in " ".join(refused.stderr.split())
    assert (tmp_path / ".hydra/overrides.yaml").read_text() == overrides
    resumed = command("metarun", *base, f"train.resume={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in (tmp_path / ".hydra").glob("resume-*/overrides.yaml")] == ["overrides.yaml"] * 2


def test_a_run_that_does_not_meta_train_resumes_only_as_itself(tmp_path):
    run(config("algo=prototypes"), tmp_path)
    (tmp_path / "metrics.json").unlink()  # as if it died while testing
    with pytest.raises(UserError, match=r"model.d_model: 64 -> 32"):
        run(config("algo=prototypes", "model.d_model=32", f"train.resume={tmp_path}"), tmp_path)
    run(config("algo=prototypes", f"train.resume={tmp_path}"), tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["best_step"] == 0


def test_a_resume_may_change_what_leaves_the_maths_alone(tmp_path, monkeypatch):
    run(config(), tmp_path / "whole")
    stop_at(monkeypatch, 3)
    with pytest.raises(RunInterrupted):
        run(config(), tmp_path / "stopped")
    monkeypatch.undo()
    run(config("debug=true", "device=auto", f"train.resume={tmp_path / 'stopped'}"), tmp_path / "stopped")
    assert (tmp_path / "stopped/metrics.json").read_text() == (tmp_path / "whole/metrics.json").read_text()


def test_a_resumed_runs_meta_training_time_counts_the_time_before_its_stop(tmp_path, monkeypatch):
    stop_at(monkeypatch, 3)
    with pytest.raises(RunInterrupted):
        run(config("algo=maml"), tmp_path / "first")
    monkeypatch.undo()
    clock = tmp_path / "first/checkpoints/clock.json"
    assert json.loads(clock.read_text())["step"] == 3
    shutil.copytree(tmp_path / "first", tmp_path / "older")
    clock.write_text(json.dumps({"step": 3, "train_seconds": 1000.0}))  # as if the steps before the stop took long
    run(config("algo=maml", f"train.resume={tmp_path / 'first'}"), tmp_path / "first")
    timing = json.loads((tmp_path / "first/timing.json").read_text())
    assert timing["resumed"] and 1000.0 < timing["meta_train_seconds"] < 1000.0 + 300
    (tmp_path / "older/checkpoints/clock.json").unlink()  # an earlier version's checkpoint: the time is not known
    run(config("algo=maml", f"train.resume={tmp_path / 'older'}"), tmp_path / "older")
    assert json.loads((tmp_path / "older/timing.json").read_text())["meta_train_seconds"] is None


def test_a_sweep_jobs_folder_resumes_as_it_is_named_unquoted(tmp_path, monkeypatch, run_cli):
    from metarun import cli

    folder = tmp_path / "0_algo=maml,seed=1"  # as Hydra names a sweep's job
    stop_at(monkeypatch, 3)
    with pytest.raises(RunInterrupted):
        run(config("algo=maml", "seed=1"), folder)
    monkeypatch.undo()
    code, _, stderr = run_cli(cli.main, *smoke(*RESUMED, "algo=maml", "seed=1"), f"train.resume={folder}")
    assert code == 0, stderr
    assert json.loads((folder / "metrics.json").read_text())["test_episodes"] > 0

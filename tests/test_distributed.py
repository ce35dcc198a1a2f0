"""Data-parallel meta-training: torchrun's processes share each meta-batch and end where one process ends."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from metarun.config import compose
from metarun.errors import UserError
from metarun.run import run

from conftest import BIN, command, smoke

TORCHRUN = ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "metarun"]  # two CPU processes, gloo
# beyond SMOKE: a dropout-free model and MAML's zero head: the tasks draw no random numbers, so the shares add up to
# the same sums (up to their order); SGD outside, since Adam turns a rounding difference in a near-zero gradient into
# a full step; 4 tasks a meta-batch, so that each process has a share; 4 outer steps, past a validation
RUN = smoke("algo=maml", "algo/outer_optimizer=sgd", "algo.outer_optimizer.lr=0.3", "train.meta_batch_size=4",
            "train.outer_steps=4")  # fmt: skip


def test_two_gloo_processes_end_where_one_process_ends(tmp_path):
    for name, how in (("one", ["metarun"]), ("two", TORCHRUN)):
        done = command(*how, *RUN, f"hydra.run.dir={tmp_path / name}")
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (torch.load(tmp_path / name / "checkpoints/last.pt") for name in ("one", "two"))
    assert one["step"] == two["step"] == 4
    for name, weight in one["model"].items():
        torch.testing.assert_close(two["model"][name], weight, rtol=0, atol=1e-6)
    scores = ("test_acc", "test_ci95", "test_episodes", "val_acc", "val_ci95", "val_episodes", "best_step")
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two")]
    assert {k: metrics[0][k] for k in scores} == {k: metrics[1][k] for k in scores}
    assert json.loads((tmp_path / "two/timing.json").read_text())["processes"] == 2
    writers = {p.name.rsplit(".", 2)[1] for p in (tmp_path / "two/tensorboard").glob("events.*")}  # their pids
    assert len(writers) == 1  # rank 0 alone writes


def test_the_other_ranks_leave_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where rank 1 keeps Hydra's logs while it runs
    (tmp_path / "tmp").mkdir()
    done = command(*TORCHRUN, *RUN, cwd=tmp_path)  # the default run folder: rank 1's is aside
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(tmp_path.glob("outputs/*/*/metrics.json"))) == 1
    assert not list((tmp_path / "tmp").glob("metarun-rank*"))  # torch keeps folders of its own there


def test_a_resume_with_another_number_of_processes_is_refused(tmp_path):
    cfg = compose("config", [*RUN, "train.outer_steps=2"])
    run(cfg, tmp_path / "run")
    last = tmp_path / "run/checkpoints/last.pt"
    saved = torch.load(last)
    saved["rng"]["torch_per_rank"] = [saved["rng"]["torch"]] * 2  # as a run of two processes leaves it
    torch.save(saved, last)
    (tmp_path / "run/metrics.json").unlink()
    with pytest.raises(UserError, match="the run had 2 process"):
        run(compose("config", [*RUN, "train.outer_steps=2", f"train.resume={tmp_path / 'run'}"]), tmp_path / "run")


def test_a_sweep_inside_torchrun_is_refused(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}  # as torchrun sets them
    done = subprocess.run([str(BIN / "metarun"), "-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Sweep with a Hydra launcher instead" in " ".join(done.stderr.split())


def test_two_processes_stopped_and_resumed_end_as_if_never_stopped(tmp_path):
    longer = ["train.outer_steps=40", "eval.val_interval=4", "model.dropout=0.2"]  # dropout: every rank's draws
    whole = command(*TORCHRUN, *RUN, *longer, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    args = [str(BIN / TORCHRUN[0]), *TORCHRUN[1:], *RUN, *longer, f"hydra.run.dir={tmp_path / 'run'}"]
    stopped = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run/checkpoints/last.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    stopped.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, told = stopped.communicate(timeout=120)
    told = " ".join(told.split())
    resume = "To continue this run: torchrun --standalone --nproc_per_node=2 -m metarun "  # as many processes again
    assert told.count(resume) == 1 and told.count("metarun stopped:") == 1, told[-3000:]  # told once, by rank 0
    step = torch.load(tmp_path / "run/checkpoints/last.pt")["step"]
    assert stopped.returncode != 0 and 4 <= step < 40 and not (tmp_path / "run/metrics.json").exists()
    resumed = command(*TORCHRUN, *RUN, *longer, f"train.resume={tmp_path / 'run'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ends = [torch.load(tmp_path / name / "checkpoints/last.pt") for name in ("whole", "run")]
    assert all(torch.equal(ends[0]["model"][n], ends[1]["model"][n]) for n in ends[0]["model"])
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("whole", "run")]
    assert metrics[0]["test_acc"] == metrics[1]["test_acc"] and metrics[0]["val_acc"] == metrics[1]["val_acc"]


def test_a_bad_value_under_torchrun_is_told_once(tmp_path):
    done = command(*TORCHRUN, *RUN, "algo.inner_lr=-1", f"hydra.run.dir={tmp_path / 'run'}")
    told = " ".join(done.stderr.split())
    assert done.returncode != 0 and told.count("algo.inner_lr=-1.0 is not valid") == 1, told[-3000:]

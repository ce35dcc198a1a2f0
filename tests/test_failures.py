"""What goes wrong in everyday use ends clearly: full or read-only disks, crafted checkpoints, folders that hold
another run, runs started in the same second, and a failing job inside a sweep."""

import builtins
import contextlib
import errno
import json
import os
import pickle
import shlex
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from metarun import checkpoint, cli, run_folder
from metarun.checkpoint_file import FORMAT, load_checkpoint
from metarun.errors import UserError
from metarun.run import run

from conftest import SMOKE, command, compose_config

METARUN = str(Path(sys.executable).with_name("metarun"))


def metarun(*args, cwd=None):
    return command("metarun", *args, cwd=cwd)


def test_a_full_disk_mid_run_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    writes = []

    def filling_open(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        if "w" in mode and ".pt." in str(path) and str(path).endswith(".partial"):
            writes.append(path)
            if len(writes) > 2:  # step 2 wrote best.pt and last.pt; step 4 finds the disk full halfway
                file.write(b"half a checkpoint")
                file.close()
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return file

    monkeypatch.setattr(run_folder, "open", filling_open, raising=False)
    with pytest.raises(UserError) as error:
        run(compose_config("train.outer_steps=4"), tmp_path)  # checkpoints at the validations of steps 2 and 4
    message = str(error.value)
    assert f"Could not write {tmp_path / 'checkpoints'}" in message and "no space left on the device" in message
    assert "then continue the run as below: it goes on in this folder from its last checkpoint" in message
    assert error.value.run_folder == tmp_path  # the command line adds the resume command
    assert not list((tmp_path / "checkpoints").glob("*.partial"))
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["step"] == 2


def test_a_file_system_turned_read_only_mid_write_gives_one_paragraph_naming_what_is_left(tmp_path, monkeypatch):
    def read_only_after_a_part(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith(".partial"):
            file.write(b"part of it")
            file.close()
            monkeypatch.setattr(Path, "unlink", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "ro")))
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return file

    monkeypatch.setattr(run_folder, "open", read_only_after_a_part, raising=False)
    with pytest.raises(UserError) as error:
        run_folder.write_text_atomically(tmp_path / "metrics.json", "{}")
    message = str(error.value)
    assert f"Could not write {tmp_path / 'metrics.json'}: the file system is read-only" in message
    (left,) = tmp_path.glob("metrics.json.*.partial")
    assert f"{left} is left over (it could not be removed): delete it" in message


def test_a_failed_run_says_why_in_its_cli_log(tmp_path, run_cli):
    code, _, stderr = run_cli(cli.main, *SMOKE, "algo.inner_lr=-1", f"hydra.run.dir={tmp_path}")
    assert code == 2 and "algo.inner_lr=-1.0 is not valid" in stderr
    assert "[ERROR] - metarun error: algo.inner_lr=-1.0 is not valid" in (tmp_path / "cli.log").read_text()


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    folder.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("this machine cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("options, words", [("size=2m", "no space left for them"), ("ro,size=1m", "read-only")])
def test_a_small_or_read_only_disk_is_refused_before_training(tmp_path, run_cli, options, words):
    with tmpfs(tmp_path / "run" / "checkpoints", options):
        code, stdout, stderr = run_cli(cli.main, *SMOKE, f"hydra.run.dir={tmp_path / 'run'}")
        assert code == 2 and "Traceback" not in stderr
        message = " ".join(stderr.split())
        assert words in message and str(tmp_path / "run" / "checkpoints") in message
        assert "meta-train" not in stdout  # refused before the first outer step
        assert not list((tmp_path / "run" / "checkpoints").iterdir())


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_pickle_checkpoint_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would make a default torch.load unpickle anything
    crafted = tmp_path / "best.pt"
    torch.save({"format": checkpoint.FORMAT, "model": Payload()}, crafted, pickle_protocol=2)
    with pytest.raises(UserError, match="refused: it holds Python objects"):
        load_checkpoint(crafted)
    assert not (tmp_path / "pwned").exists()
    crafted.write_bytes(pickle.dumps({"format": 2}))  # a plain pickle, not a torch zip archive
    with pytest.raises(UserError, match="corrupt or truncated|refused"):
        load_checkpoint(crafted)


@contextlib.contextmanager
def held_by_another_process(folder: Path):
    """`folder` locked by another process, as a run writing there holds it; yields that process's pid."""
    code = "import sys, time; from pathlib import Path; from metarun.run_folder import folder_lock\n" \
           "with folder_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)"  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_run_folder_in_use_is_refused_to_a_second_run_and_to_a_resume(tmp_path):
    run(compose_config(), tmp_path / "stopped")  # a run with a last.pt to continue from
    (tmp_path / "busy").mkdir()
    resume = f"train.resume={tmp_path / 'stopped'}"
    for folder, overrides in ((tmp_path / "busy", ()), (tmp_path / "stopped", (resume,))):
        with held_by_another_process(folder) as pid:
            files = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
            with pytest.raises(UserError, match=rf"{folder} is in use by another metarun process \(pid {pid}\)"):
                run(compose_config(*overrides), folder)
            assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == files  # nothing written
    run(compose_config(resume), tmp_path / "stopped")  # free again once the holder ended


def test_the_command_refuses_a_folder_in_use_before_hydra_writes_its_config_there(tmp_path, run_cli):
    folder = tmp_path / "run"
    folder.mkdir()
    with held_by_another_process(folder) as pid:
        code, _, stderr = run_cli(cli.main, *SMOKE, f"hydra.run.dir={folder}")
    assert code == 2 and f"in use by another metarun process (pid {pid})" in " ".join(stderr.split())
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # no .hydra/, no cli.log: the other run's own
    assert run_cli(cli.main, *SMOKE, f"hydra.run.dir={folder}")[0] == 0  # the folder is free once it ended


def test_a_command_that_stops_leaves_its_folder_unlocked(tmp_path, run_cli):
    folder = tmp_path / "run"
    code, _, stderr = run_cli(cli.main, *SMOKE, "task.n_way=200", f"hydra.run.dir={folder}")  # refused in the run
    assert code == 2 and "task.n_way=200" in stderr
    with held_by_another_process(folder):  # the next process gets the lock (its readline would be empty else)
        pass


def test_a_checkpoint_damaged_on_disk_is_refused_not_loaded(tmp_path):
    run(compose_config(), tmp_path / "run")
    best = tmp_path / "run/checkpoints/best.pt"
    with zipfile.ZipFile(best) as archive:  # the largest member: tensor data
        member = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(best.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26 : member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length  # where the member's bytes begin
    data[start + member.file_size // 2] ^= 0x10  # one bit of one weight
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    crc = rf"damaged.pt is corrupt or truncated, .*\({member.filename} does not match its CRC-32\)"
    with pytest.raises(UserError, match=crc):
        load_checkpoint(damaged)
    (tmp_path / "hello.pt").write_text("hello\n")  # not a checkpoint at all
    with pytest.raises(UserError, match=r"hello.pt is corrupt or truncated, .*\(the file is not a zip archive"):
        load_checkpoint(tmp_path / "hello.pt")
    assert load_checkpoint(best)["step"] >= 1  # the intact file still loads


def test_a_checkpoint_of_another_format_is_named(tmp_path):
    torch.save({"format": FORMAT - 2, "model": {}}, tmp_path / "old.pt")  # format 3 is read as 4
    with pytest.raises(UserError, match=rf"not a metarun checkpoint of format {FORMAT} \(found {FORMAT - 2}"):
        load_checkpoint(tmp_path / "old.pt")


@pytest.mark.parametrize("algo", ["scratch", "prototypes"])
def test_a_run_never_reads_a_checkpoint_it_did_not_write(tmp_path, algo):
    run(compose_config(), tmp_path / "maml")
    with pytest.raises(UserError, match="already holds another run's results"):
        run(compose_config(f"algo={algo}"), tmp_path / "maml")
    run(compose_config(f"algo={algo}"), tmp_path / "fresh")
    assert json.loads((tmp_path / "fresh/metrics.json").read_text())["best_step"] == 0  # its own start, not MAML's


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    jobs = [subprocess.Popen([METARUN, *SMOKE, f"seed={s}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for s in (0, 1)]  # fmt: skip
    assert [job.wait(timeout=300) for job in jobs] == [0, 0], [job.stderr.read()[-2000:] for job in jobs]
    folders = sorted(p.parent for p in tmp_path.glob("outputs/*/*/metrics.json"))
    assert len(folders) == 2
    for folder in folders:  # each run's results sit beside its own config
        seed = json.loads((folder / "metrics.json").read_text())["seed"]
        assert f"seed={seed}" in (folder / ".hydra/overrides.yaml").read_text()


def test_a_failing_job_does_not_end_the_sweep(tmp_path):
    result = metarun("-m", *SMOKE, "algo=fomaml", "algo.outer_optimizer.lr=1e30,3e-3", "train.grad_clip=null",
                     "lr_schedule=constant", f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    failed, done = sorted(tmp_path.glob("[01]_*"))
    assert "diverged at outer step" in (failed / "error.txt").read_text()
    assert (done / "metrics.json").is_file() and not (failed / "metrics.json").exists()
    summary = " ".join(result.stderr.split()).split("1 job(s) of the sweep failed:")[1]
    assert "algo.outer_optimizer.lr=1e+30" in summary and "diverged" in summary and "0.003" not in summary


def test_a_sweep_never_writes_into_another_sweeps_folder(tmp_path):
    assert metarun("-m", *SMOKE, "seed=0", f"hydra.sweep.dir={tmp_path}").returncode == 0
    kept, entries = (tmp_path / "multirun.yaml").read_text(), sorted(tmp_path.iterdir())
    again = metarun("-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert again.returncode == 2 and "already holds another sweep" in " ".join(again.stderr.split())
    assert (tmp_path / "multirun.yaml").read_text() == kept and sorted(tmp_path.iterdir()) == entries


def test_a_stopped_sweep_refused_its_folder_names_the_command_that_continues_each_unfinished_job(tmp_path):
    assert metarun("-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={tmp_path}").returncode == 0
    (stopped,) = tmp_path.glob("1_*seed=1")
    (stopped / "metrics.json").unlink()  # as if stopped at test time, after its last checkpoint
    again = metarun("-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    told = again.stderr.splitlines()
    assert again.returncode == 2 and "Its jobs without results (1 of 2); each goes on with:" in told
    (line,) = [line.strip() for line in told if "train.resume=" in line]
    assert line.startswith("metarun ") and "seed=1" in line and line.endswith(f"train.resume={stopped}")
    resumed = command(*shlex.split(line))  # as printed: the folder's = and , need no quotes for Hydra
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (stopped / "metrics.json").is_file()


def test_a_sweep_never_writes_into_a_folder_with_another_sweeps_jobs(tmp_path):
    (tmp_path / "0_seed=3" / ".hydra").mkdir(parents=True)  # a job of a sweep that writes no multirun.yaml (Optuna)
    again = metarun("-m", *SMOKE, "seed=0", f"hydra.sweep.dir={tmp_path}")
    assert again.returncode == 2 and "already holds another sweep's jobs" in " ".join(again.stderr.split())
    assert [p.name for p in tmp_path.iterdir()] == ["0_seed=3"]


def test_a_refused_folder_keeps_the_other_runs_config_files(tmp_path, run_cli):
    assert run_cli(cli.main, *SMOKE, f"hydra.run.dir={tmp_path}")[0] == 0
    kept = (tmp_path / ".hydra/overrides.yaml").read_text()
    code, _, stderr = run_cli(cli.main, *SMOKE, "algo=fomaml", "seed=9", f"hydra.run.dir={tmp_path}")
    assert code == 2 and "already holds another run's results" in " ".join(stderr.split())
    assert (tmp_path / ".hydra/overrides.yaml").read_text() == kept


def test_debug_shows_the_traceback_of_a_single_run(tmp_path):
    result = metarun(*SMOKE, "task.n_way=200", "debug=true", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1 and "Traceback" in result.stderr and "UserError" in result.stderr
    assert "sweep" not in result.stderr and not (tmp_path / "error.txt").exists()


def test_ctrl_c_in_a_sweep_stops_it_cleanly(tmp_path):
    import signal
    import time

    args = [METARUN, "-m", *SMOKE, "train.outer_steps=100000", "seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    sweep = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("0_*/checkpoints/last.pt")) and time.time() < deadline:
        time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "Traceback" not in stderr
    assert "The sweep stopped at this job" in " ".join(stderr.split()) and not list(tmp_path.glob("1_*"))

"""A normal (non-editable) install works: the wheel ships conf/ inside the package and the command composes it."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import metarun

REPO = Path(__file__).resolve().parents[1]
# build from a copy: an in-tree build writes build/ and *.egg-info into the shared checkout, and reuses stale ones
NOT_SOURCE = (".venv", ".git", "build", "dist", "outputs", "multirun", "*.egg-info", "__pycache__", ".*_cache")


def run(command, cwd, env=None):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_ships_the_configs_and_the_installed_command_composes_them(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], cwd=tmp_path)
    (wheel,) = wheels.glob("metarun-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"metarun/conf/config.yaml", "metarun/conf/algo/maml.yaml"} <= names
    configs = {f"metarun/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in REPO.glob("conf/**/*.yaml")}
    assert {n for n in names if n.endswith(".yaml")} == configs
    modules = {p.relative_to(REPO).as_posix() for p in REPO.glob("metarun/**/*.py")}
    assert modules <= names, f"not in the wheel (list the package in pyproject.toml): {sorted(modules - names)}"
    assert not [n for n in names if n.startswith(("tests/", "conf/", "scripts/")) or "/test_" in n]

    site = tmp_path / "site"
    run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing may come from the checkout
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    # PYTHONPATH (PathFinder) comes before the editable install's finder, which maps `metarun` to the repository
    where = run(
        [sys.executable, "-c", "import metarun.cli as c; print(c.__file__); print(c.CONF_DIR)"], elsewhere, env
    ).split("\n")
    assert Path(where[0]) == site / "metarun" / "cli.py"
    assert Path(where[1]) == site / "metarun" / "conf"

    command = site / "bin" / "metarun"
    composed = run([str(command), "--cfg", "job"], elsewhere, env)
    assert "_target_: metarun.algorithms.MAML" in composed and "outer_steps:" in composed
    searchpath = run([str(command), "--info", "searchpath"], elsewhere, env)
    assert f"file://{site / 'metarun' / 'conf'}" in searchpath and str(REPO / "conf") not in searchpath


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pipx") is None, reason="needs pipx on PATH (pip install pipx)")
def test_pipx_install_takes_a_torch_of_the_tested_range_and_the_command_runs(tmp_path):
    """The README's `pipx install .`: torch comes from the range pyproject.toml gives, and `metarun` runs."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    done = subprocess.run(["pipx", "install", str(source)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    python = tmp_path / "pipx" / "venvs" / "metarun" / "bin" / "python"
    version = run([str(python), "-c", "import torch; print(torch.__version__)"], tmp_path).strip()
    assert (2, 11) <= tuple(int(part) for part in version.split(".")[:2]) < (2, 14), version
    assert run([str(tmp_path / "bin" / "metarun"), "--version"], tmp_path).strip() == f"metarun {metarun.__version__}"

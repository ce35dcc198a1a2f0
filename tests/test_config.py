"""The schema: every config group option has one, and every setting is checked before any work."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from metarun.config import compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from metarun import cli
from metarun.cli import CONF_DIR
from metarun.config import check_config
from metarun.schema import SCHEMAS
from metarun.errors import UserError
from metarun.run import run

METARUN = str(Path(sys.executable).with_name("metarun"))
GROUPS = {group: sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")) for group in SCHEMAS}


def config(*overrides):
    return compose("config", overrides)


@pytest.mark.parametrize("group, option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_option_extends_its_groups_schema(group, option):
    needed = {"hf": ["model.name_or_path=x"], "local": ["data.files=x.jsonl"],  # the ??? settings
              "fixed_tasks": ["task.eval_tasks=[{name:x,train:x.jsonl,test:y.jsonl}]"],
              "class_splits": ["task.class_splits=x"], "ratings": ["data.ratings=r.jsonl", "data.items=i.jsonl"],
              }.get(option, [])  # fmt: skip
    cfg = config(f"{group}={option}", *needed)
    assert OmegaConf.get_type(cfg[group]) in SCHEMAS[group].values()
    check_config(cfg)  # the shipped options are valid as they are


@pytest.mark.parametrize(
    "override, message",
    [
        ("task.n_way=1", "task.n_way=1 is not valid; it must be at least 2."),
        ("task.k_shot=0", "task.k_shot=0 is not valid; it must be at least 1."),
        ("task.n_query=0", "task.n_query=0 is not valid; it must be at least 1."),
        ("eval.val_episodes=0", "eval.val_episodes=0 is not valid; it must be at least 1."),
        ("eval.test_episodes=0", "eval.test_episodes=0 is not valid; it must be at least 1."),
        ("algo.inner_lr=-1", "algo.inner_lr=-1.0 is not valid; it must be greater than 0.0."),
        (
            "algo.inner_scope=layer",
            "algo.inner_scope='layer' is not valid; use one of: all, top, head, lora, lora_top.",
        ),
        ("algo.batch_tasks=maybe", "algo.batch_tasks='maybe' is not valid; use one of: auto, true, false."),
        ("algo.outer_optimizer.lr=0", "algo.outer_optimizer.lr=0.0 is not valid; it must be greater than 0.0."),
        ("algo.head_lr=0", "algo.head_lr=0.0 is not valid; it must be greater than 0.0."),
        ("device.name=tpu", "device.name='tpu' is not valid; use one of: auto, cpu, cuda."),
        ("model.dropout=1.0", "model.dropout=1.0 is not valid; it must be less than 1.0."),
    ],
)
def test_ranges_and_choices_are_checked_with_the_key_the_value_and_what_is_valid(override, message):
    with pytest.raises(UserError) as error:
        check_config(config(override))
    assert str(error.value) == message


def test_all_problems_are_told_at_once_before_any_data_is_read(tmp_path):
    cfg = config("data=local", f"data.files={tmp_path / 'absent.jsonl'}", "algo.inner_lr=0", "task.k_shot=0")
    with pytest.raises(UserError) as error:
        run(cfg, tmp_path / "run")
    assert "algo.inner_lr=0.0 is not valid" in str(error.value) and "task.k_shot=0 is not valid" in str(error.value)
    assert not (tmp_path / "run").exists()  # nothing was read or written


@pytest.mark.parametrize(
    "override, words",
    [("+train.outer_step=3", "train.outer_step is not a setting, so nothing would read it; did you mean "
                             "train.outer_steps?"),
     ("+trian.seed=1", "trian is not a setting"),
     ("+algo.distanse=cosine", "algo.distanse is not a setting"),
     ("+algo.zzz=1", "algo.zzz is not a setting, so nothing would read it; the settings there are: outer_optimizer,")],
)  # fmt: skip
def test_a_key_added_with_plus_that_no_setting_reads_is_refused(tmp_path, override, words):
    cfg = config("algo=protonet", override)  # Hydra lets `+` add keys the schema does not have
    with pytest.raises(UserError, match=re.escape(words)):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, words",
    [("train.outer_steps=abc", "could not be converted to Integer"), ("task.k_shot=1.5", "to Integer"),
     ("algo.inner_lr=abc", "could not be converted to Float"),
     ("lr_schedule=linear", "lr_schedule=linear is not an option of lr_schedule. The options are: constant, cosine."),
     ("train.outer_stepz=3", "train.outer_stepz is not a setting, so nothing would read it; did you mean "
                             "train.outer_steps?")],
)  # fmt: skip
def test_wrong_types_and_unknown_names_exit_2_with_one_paragraph(tmp_path, run_cli, override, words):
    with pytest.raises(ConfigCompositionException):
        config(override)  # refused while composing, before run() starts
    code, _, stderr = run_cli(cli.main, override, f"hydra.run.dir={tmp_path}")
    assert code == 2 and "Traceback" not in stderr
    message = " ".join(stderr.split())
    assert words in message and override.split("=")[0] in message
    assert not (tmp_path / "metrics.json").exists()


def test_the_installed_command_tells_a_composition_error_in_one_paragraph_without_hydra_full_error(tmp_path):
    """metarun sets HYDRA_FULL_ERROR itself when it starts (an in-process run finds it set already)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([METARUN, "train.outer_steps=abc", f"hydra.run.dir={tmp_path}"], capture_output=True,
                            text=True, env=env)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "could not be converted to Integer" in " ".join(result.stderr.split())


def test_a_data_folder_that_is_not_there_names_where_it_came_from_and_metarun_data(tmp_path, run_cli):
    code, _, stderr = run_cli(cli.main, "experiment=arsc_dev", f"paths.data={tmp_path / 'none'}",
                              f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    told = " ".join(stderr.split())
    assert code == 2 and f"paths.data={tmp_path / 'none'}" in told and "is not a folder, but this run reads" in told
    assert "Point METARUN_DATA at the folder that holds the data sets" in told

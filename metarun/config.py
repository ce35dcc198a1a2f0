"""Composing the config, and checking it before any work.

The schemas (`metarun.schema`, and each part's beside its code) are registered with Hydra's ConfigStore; each YAML
under `conf/` names its schema first in its defaults list and sets only what differs, so Hydra checks types while
composing and `check_config` checks the ranges and choices written in each field's metadata, and what each part
says of its own settings, before any data is read.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import tempfile
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from metarun.errors import UserError, unknown_setting
from metarun.results import flatten
from metarun.schema import COMMANDS, SCHEMAS

# absolute, from any working directory: a wheel ships conf/ as metarun/conf; an editable install reads the repo's conf/
_PACKAGE = Path(__file__).resolve().parent
CONF_DIR = str(_PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf")


PARTS = ("metarun.model", "metarun.pretrained", "metarun.algorithms", "metarun.tasks", "metarun.data")


def import_parts() -> None:
    """Import every module of the packages that hold parts, so that each part's schema registers itself."""
    for name in PARTS:
        package = importlib.import_module(name)
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            importlib.import_module(f"{name}.{module.name}")


def register_configs() -> None:
    """The schemas as `schema/<group>/<name>`, which each YAML of `conf/<group>` extends (`@_here_`)."""
    import_parts()
    store = ConfigStore.instance()
    for name, node in COMMANDS.items():
        store.store(name=name, node=node)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


_RUN_ID = uuid.uuid4().hex[:6]  # one per process: runs started in the same second get different folders


def register_resolvers() -> None:
    """`${run_id:}` for unique run folders; `${run_dir:resume,default}` puts a resumed run in its own folder, and
    `${hydra_subdir:resume}` its config files in `.hydra/resume-ID`, beside the original ones; `${config_groups:}`
    lists conf/'s groups and options for `--help`."""
    OmegaConf.register_new_resolver("run_id", lambda: _RUN_ID, replace=True)
    OmegaConf.register_new_resolver("config_groups", _config_groups, replace=True)
    OmegaConf.register_new_resolver("abspath", lambda path: str(Path(path).expanduser().resolve()), replace=True)
    OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)
    OmegaConf.register_new_resolver("hydra_subdir", _hydra_subdir, replace=True)


def config_groups() -> list[str]:
    """The config groups of conf/ (`algo`, `algo/outer_optimizer`, ...): Hydra's own list adds the schema groups."""
    folders = {path.parent for path in Path(CONF_DIR).rglob("*.yaml")} - {Path(CONF_DIR)}
    return sorted(str(folder.relative_to(CONF_DIR)) for folder in folders)


def group_options(group: str) -> list[str]:
    """The options of one config group: its YAML files' names."""
    return sorted(path.stem for path in (Path(CONF_DIR) / group).glob("*.yaml"))


def _config_groups(*only: str) -> str:
    """Each group of conf/ (or those named) with its options, one line each, for `--help`."""
    return "\n".join(f"  {group}: {', '.join(group_options(group))}" for group in config_groups()
                     if not only or group in only)  # fmt: skip


def process_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def aside_folder() -> Path:
    """Under torchrun, where a rank above 0 keeps Hydra's logs: rank 0 alone writes the run's folder."""
    return Path(tempfile.gettempdir()) / f"metarun-rank{process_rank()}-{_RUN_ID}"


def _run_dir(resume: str | None, default: str) -> str:
    return str(aside_folder()) if process_rank() > 0 else resume or default


def _hydra_subdir(resume: str | None) -> str | None:
    if process_rank() > 0:
        return None
    return f".hydra/resume-{_RUN_ID}" if resume else ".hydra"


def compose(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """metarun's config (`config`, `evaluate` or `predict`) as its command line composes it, for Python callers:
    Hydra's record of the composition is set as inside the app, so `${hydra:...}` values resolve."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_configs()
    register_resolvers()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # as the app's task config: Hydra's own settings live in HydraConfig only
    return cfg


def _problem(key: str, value: Any, rules: dict) -> str | None:
    """What is wrong with one value under its rules, None when it is valid."""
    if value is None:
        return None
    if "choices" in rules and value not in rules["choices"]:
        shown = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in rules["choices"])
        return f"{key}={value!r} is not valid; use one of: {shown}."
    bounds = {"least": (lambda v, b: v >= b, "at least"), "above": (lambda v, b: v > b, "greater than"),
              "below": (lambda v, b: v < b, "less than")}  # fmt: skip
    broken = [f"{words} {rules[name]}" for name, (holds, words) in bounds.items()
              if name in rules and not holds(value, rules[name])]  # fmt: skip
    if broken:
        return f"{key}={value!r} is not valid; it must be {' and '.join(broken)}."
    return None


def _problems(node: DictConfig, prefix: str, extra: Collection[str] = ()) -> list[str]:
    schema = OmegaConf.get_type(node)
    rules = {f.name: f.metadata for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    found = []
    for key in node:
        name = f"{prefix}{key}"
        if rules and key not in rules and name not in extra:
            found.append(unknown_setting(name, list(rules)))
            continue
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            found += _problems(value, f"{name}.", extra)
        elif isinstance(value, ListConfig):
            found += [p for i, item in enumerate(value) if isinstance(item, DictConfig)
                      for p in _problems(item, f"{name}[{i}].")]  # fmt: skip
        elif rules.get(key):
            found.append(_problem(name, value, rules[key]))
    return [p for p in found if p]


PARTS_CHECKED = ("model", "algo", "task", "data")  # the groups whose parts check their settings' combination


def check_config(cfg: DictConfig, extra: Collection[str] = (), parts: Collection[str] = PARTS_CHECKED) -> None:
    """Every setting against its schema, before any work: values still missing, unknown keys (but the dotted names
    in `extra`), ranges and choices, then what each of `parts` says of its own settings' combination."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(
            f"These settings need a value: {', '.join(missing)}; give them on the command line, e.g. {missing[0]}=..."
        )
    problems = _problems(cfg, "", extra)
    refuse_combinations(cfg, parts, problems)
    check_data_folder(cfg)


def refuse_combinations(
    cfg: DictConfig, parts: Collection[str] = PARTS_CHECKED, problems: Collection[str] = ()
) -> None:
    """Refuse, in one paragraph with `problems` found before, what each of `parts` says of its settings' combination."""
    problems = list(problems)
    for node in (cfg[group] for group in parts if group in cfg):
        part = get_object(node._target_)
        problems += part.settings_problems(node) if hasattr(part, "settings_problems") else []
    if problems:
        raise UserError(" ".join(problems))


def check_data_folder(cfg: DictConfig) -> None:
    """The data sets' folder exists where the run reads from it: its default is relative to the folder metarun runs
    in, which an installed command does not know."""
    if "paths" not in cfg or os.path.isdir(cfg.paths.data):
        return
    settings = {**flatten(OmegaConf.to_container(cfg.data, resolve=True), "data."),
                **flatten(OmegaConf.to_container(cfg.task, resolve=True), "task.")}  # fmt: skip
    reading = [f"{k}={path}" for k, v in settings.items() for path in (v if isinstance(v, list) else [v])
               if str(path).startswith(cfg.paths.data)]  # fmt: skip
    if reading:
        given = "METARUN_DATA" if os.environ.get("METARUN_DATA") else f"../shared/data from {os.getcwd()}"
        raise UserError(
            f"paths.data={cfg.paths.data} ({given}) is not a folder, but this run reads its data there "
            f"({reading[0]}). Point METARUN_DATA at the folder that holds the data sets (clinc150/, arsc_source/, ...) "
            "or give paths.data=<that folder>."
        )

"""`metarun-eval`: score a saved run's checkpoint again, with its own tokenizer and algorithm, on its own meta-test or
on other data and tasks. The command line may change only where the run is scored and how it adapts there: the
data, task, eval and device settings, and its algorithm's test-time settings (`Algorithm.test_time_settings`)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from metarun.checkpoint_file import load_checkpoint
from metarun.config import check_config, refuse_combinations
from metarun.errors import UserError
from metarun.evaluation import score_test
from metarun.parts import build, build_task, use_threads
from metarun.progress import phase, print_config, print_results, print_where
from metarun.results import identity, title
from metarun.run_folder import write_text_atomically
from metarun.schema import SCHEMAS
from metarun.trained import checkpoint_path, model_from_checkpoint

EVAL_GROUPS = ("data", "task", "eval", "device")  # any setting inside these
ALWAYS = ("run", "checkpoint", "scored")  # metarun-eval's own settings


def test_time_settings() -> list[str]:
    """Every algorithm's test-time settings, as `algo.<name>`."""
    classes = [get_class(schema._target_) for schema in SCHEMAS["algo"].values()]
    return sorted({f"algo.{name}" for cls in classes for name in cls.test_time_settings})


def evaluate_run(cfg: DictConfig, output_dir: Path, overrides: list[str]) -> float:
    """Score `cfg.run`'s checkpoint, changed only by the command line's `overrides`, on its test split or, when they
    change the data, on every class (or domain) of that data. The metrics go to `output_dir`; the run's folder is
    only read. Returns the test accuracy."""
    changed = changed_settings(overrides)
    # `+algo.transductive_steps`: a setting of the run's algorithm; the task's combination is checked once it is the
    # run's own (a class_splits task is valid only with the split the run names)
    check_config(cfg, extra=test_time_settings(), parts=("model", "algo", "data"))
    saved = load_checkpoint(checkpoint_path(cfg.run, cfg.checkpoint))  # read once: its config, then its weights
    run_cfg = OmegaConf.create(saved["config"])
    # the run's own option of a group (metarun-eval picks the run's task itself) is no change: its settings stay
    changed = [k for k in changed if not (k in run_cfg.choices and cfg.choices.get(k) == run_cfg.choices[k])]
    for key in changed:
        OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), merge=False)
        if key in cfg.choices:  # another option of a group: its name too
            run_cfg.choices[key] = cfg.choices[key]
    refuse_combinations(run_cfg, ("task",))
    family = build_task(run_cfg)
    family.check_scored(cfg.scored)
    own = get_class(run_cfg.algo._target_).test_time_settings
    foreign = [k for k in changed if k.startswith("algo.") and k.removeprefix("algo.") not in own]
    if foreign:
        raise UserError(
            f"{', '.join(foreign)}: not a setting of {run_cfg.choices.algo}, the algorithm {cfg.run} was trained with. "
            f"Its test-time settings: {', '.join(f'algo.{s}' for s in own) or 'none'}. Remove it."
        )
    print_config(run_cfg, chosen=dict(run_cfg.choices))  # the run's own options, as changed here
    use_threads(run_cfg.device)
    model = model_from_checkpoint(saved, run_cfg.device.name, run_cfg)
    if family.tests_on_corpus:
        own_data = OmegaConf.to_container(run_cfg.data, resolve=True) == saved["config"]["data"]
        if own_data:
            refuse_other_split(run_cfg, saved["config"]["task"], ("_target_", *family.split_settings))
        family.load_test(build(run_cfg.data), model.tokenizer, every_row=not own_data)
        if own_data:
            family.check_run_files(Path(cfg.run))
    seed = run_cfg.eval.seed + 1
    test_set = family.test_set(model.tokenizer, run_cfg.eval.test_episodes, seed, cfg.scored)
    params = model.head_of_size(run_cfg.task.n_way)
    scored = "meta-test" if cfg.scored == "test" else f"{cfg.scored} files"  # fixed tasks' dev files are no test
    with phase(scored) as advance:
        test = score_test(model.algorithm, params, test_set, model.device, seed, advance)
    metrics = {**test.metrics(), "scored": cfg.scored, "run": str(Path(cfg.run).resolve()),
               "checkpoint": cfg.checkpoint, "step": model.step,
               "changed": {k: _plain(OmegaConf.select(run_cfg, k)) for k in changed},
               **identity(run_cfg, model.device)}  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=1))
    files = "" if family.tests_on_corpus else f" · its {cfg.scored} files"
    print_results(f"{title(run_cfg)} · {cfg.checkpoint}.pt of {cfg.run}{files}", test.rows(scored),
                  family.objective.shown)  # fmt: skip
    print_where("scores written to", (output_dir / "metrics.json").resolve())
    return test.accuracy.mean


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def changed_settings(overrides) -> list[str]:
    """The settings the command line changes, each checked against what an evaluation may change."""
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))]
    keys = [k for k in keys if k not in ALWAYS]
    allowed = (*EVAL_GROUPS, "debug", *test_time_settings())
    refused = [k for k in keys if not (k in allowed or k.split(".")[0] in EVAL_GROUPS)]
    if refused:
        raise UserError(
            f"metarun-eval cannot change {', '.join(refused)}: the checkpoint was trained with the run's own model and "
            f"algorithm. It may change: {', '.join(allowed)} (and anything inside data, task, eval and device)."
        )
    return keys


def refuse_other_split(cfg: DictConfig, run_task: dict, split_settings: tuple[str, ...]) -> None:
    """On the run's own data only its own meta-test split is unseen: another split would test on meta-training
    classes."""
    for key in split_settings:
        now, own = _plain(cfg.task[key]), run_task.get(key)
        if now != own:
            which = f"task={cfg.choices.task} (a family that splits the data otherwise)" if key == "_target_" else (
                f"task.{key}={now!r} differs from the run's own ({own!r})")  # fmt: skip
            raise UserError(
                f"{which}: on the run's own data another split would score classes the run meta-trained on. Keep the "
                "run's split and task family, or give other data."
            )

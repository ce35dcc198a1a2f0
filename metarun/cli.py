"""The `metarun` command: compose the config, run it, turn bad input and stops into clear messages."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tensorboard's optional TensorFlow import stays quiet
os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # composition errors reach `main` whole, to be told in one paragraph

import hydra  # noqa: E402

import metarun  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from metarun.config import (  # noqa: E402
    CONF_DIR,
    aside_folder,
    check_config,
    config_groups,
    group_options,
    process_rank,
    register_configs,
    register_resolvers,
)
from metarun.callbacks import FailedJobs, RunFolderGuard  # noqa: E402
from metarun.evaluate_run import evaluate_run, test_time_settings  # noqa: E402
from metarun.export import export  # noqa: E402
from metarun.predict import predict  # noqa: E402
from metarun.results import IDENTITY  # noqa: E402
from metarun.run import run  # noqa: E402
from metarun.errors import (  # noqa: E402
    EXIT_USER_ERROR,
    RunInterrupted,
    UserError,
    composition_error,
    report,
    reported_stops,
    stop_signals,
    unknown_option,
)

register_configs()
register_resolvers()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        report("torchrun runs one metarun run over several processes; a sweep (-m) would start every job in every "
               "process. Sweep with a Hydra launcher instead (hydra/launcher=joblib, or submitit on Slurm), or give "
               "torchrun one run's overrides.")  # fmt: skip
        sys.exit(EXIT_USER_ERROR)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # raise: Hydra records the job as failed and the sweep goes on
        with stop_signals():
            check_named_tuning(hydra_cfg)
            return run(cfg, Path(hydra_cfg.runtime.output_dir))
    with reported_stops(cfg.debug, resume_command(hydra_cfg.overrides.task)), aside_folder_removed(hydra_cfg):
        check_named_tuning(hydra_cfg)
        return run(cfg, Path(hydra_cfg.runtime.output_dir))


@contextlib.contextmanager
def aside_folder_removed(hydra_cfg) -> Iterator[None]:
    """Under torchrun a rank above 0 gets a folder aside (`config.aside_folder`) for Hydra's logs: gone when it ends."""
    try:
        yield
    finally:
        folder = Path(hydra_cfg.runtime.output_dir)
        if process_rank() > 0 and folder == aside_folder():  # not a hydra.run.dir given on the command line
            shutil.rmtree(folder, ignore_errors=True)


def check_named_tuning(hydra_cfg) -> None:
    """`tuning` is optional, so Hydra skips a missing file silently: right for `<algo>_<model>`, which few pairs
    have, wrong for a tuning asked for by name, whose typo would run without it."""
    if not any(o.startswith("tuning=") for o in hydra_cfg.overrides.task):
        return
    options = group_options("tuning")
    if hydra_cfg.runtime.choices.tuning not in options:
        raise UserError(unknown_option("tuning", hydra_cfg.runtime.choices.tuning, options))


def resume_command(overrides) -> str:
    """The command line that continues this run (its own overrides, the folder filled in by the caller): under
    torchrun, as many processes again (a resume refuses another number, which would change its random draws)."""
    kept = [o for o in overrides if not o.startswith(("train.resume=", "hydra.run.dir="))]
    return " ".join([*launcher_command(), *map(shlex.quote, kept), "train.resume={folder}"])


def launcher_command() -> list[str]:
    """`metarun`, or the torchrun line that started this process with as many nodes and processes."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world == 1:
        return ["metarun"]
    nodes = [] if world == local else [f"--nnodes={world // local}", "--rdzv-endpoint=<host:port>"]
    return ["torchrun", *(nodes or ["--standalone"]), f"--nproc_per_node={local}", "-m", "metarun"]


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
def eval_app(cfg: DictConfig) -> float:
    with reported_stops(cfg.debug, ""):
        hydra_cfg = HydraConfig.get()
        return evaluate_run(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
def export_app(cfg: DictConfig) -> None:
    with reported_stops(False, ""):
        check_config(cfg)
        export(cfg)


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def predict_app(cfg: DictConfig) -> None:
    with reported_stops(False, ""):
        predict(cfg)


def _launch(hydra_app, added: tuple[str, ...] = ()) -> None:
    """Run a Hydra app, its bad input told in one paragraph; `added`: settings this command takes with a leading +."""
    if sys.argv[1:] == ["--version"]:  # Hydra's own --version would name Hydra's
        print(f"metarun {metarun.__version__}")
        return
    try:
        with contextlib.ExitStack() as unlock:
            unlock.callback(RunFolderGuard.release)  # also when a stop skips Hydra's end of the run
            hydra_app()
    except BrokenPipeError:  # the output went to a reader that stopped early (`metarun --help | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        sys.exit(1)
    except RunInterrupted as stop:  # in a sweep: the jobs that finished keep their folders
        report(f"{stop} The sweep stopped at this job; the jobs before it are complete in their folders.",
               title="metarun stopped")  # fmt: skip
        sys.exit(stop.exit_code)
    except Exception as error:
        if FailedJobs.summary():  # a sweep raises its first failure once all jobs ran: the list says it all
            sys.exit(1)
        if isinstance(error, (HydraException, OmegaConfBaseException)):  # bad overrides, options or types
            report(composition_error(error, added))
            sys.exit(EXIT_USER_ERROR)
        if isinstance(error, ValueError) and str(error).startswith("Config group override must be"):  # null, 1, ...
            groups = set(config_groups())
            groups = [arg for arg in sys.argv[1:] if arg.partition("=")[0] in groups]
            report(f"{' '.join(groups) or 'A config group'}: a config group takes the name of one of its options. "
                   "An optional group (experiment, tuning, budget, ...) is left out with ~group, e.g. "
                   "~experiment.")  # fmt: skip
            sys.exit(EXIT_USER_ERROR)
        raise


NEEDS_QUOTES = re.compile(r"[=,\s\[\](){}]")  # what Hydra's grammar reads as syntax in an unquoted value
ESCAPED = re.compile(r"[\\'\"$]")  # a value with these was written for the grammar (escapes, quotes, ${...})


def quote_paths(args: list[str], names: tuple[str, ...]) -> list[str]:
    """`name=value` arguments of the settings `names` (folders and files) with the value quoted for Hydra's override
    grammar, so that a sweep job's folder (`0_algo=maml,seed=1`) can be given as it is. A value that already uses
    the grammar (escapes, quotes, interpolations), and every argument of a sweep (-m), stay as typed."""
    if "-m" in args or "--multirun" in args:
        return args
    quoted = []
    for arg in args:
        name, sep, value = arg.partition("=")
        plain = sep and name in names and NEEDS_QUOTES.search(value) and not ESCAPED.search(value)
        quoted.append(f"{name}='{value}'" if plain else arg)
    return quoted


def main() -> None:
    """`metarun`: meta-train, validate and test one run (or a sweep with -m)."""
    sys.argv[1:] = quote_paths(sys.argv[1:], ("train.resume",))  # a sweep job's folder, as it is named
    _launch(app)


def eval_main() -> None:
    """`metarun-eval run=<folder>`: score a run's checkpoint on its test split, or on other data and tasks."""
    given = sys.argv[1:]
    sys.argv[1:] = quote_paths([*runs_own_task(given), *given], ("run",))
    _launch(eval_app, added=tuple(test_time_settings()))  # some are absent from the base config's algo (maml)


def runs_own_task(args: list[str]) -> list[str]:
    """`task=<the run's own option>` unless the command line picks one: the evaluation config is then composed with
    the run's task family, so that its settings (task.eval_tasks=...) can be changed one by one."""
    folder = next((a.partition("=")[2].strip("'\"") for a in args if a.startswith("run=")), None)
    if folder is None or any(a.startswith(("task=", "~task")) for a in args):
        return []
    try:  # the option the run's metrics.json names; without one, the checkpoint's config is the base as it is
        option = json.loads((Path(folder) / "metrics.json").read_text()).get(IDENTITY["task"])
    except (OSError, ValueError):
        return []
    return [f"task={option}"] if option in group_options("task") else []


def export_main() -> None:
    """`metarun-export run=<folder> out=<dir>`."""
    sys.argv[1:] = quote_paths(sys.argv[1:], ("run", "out"))
    _launch(export_app)


def predict_main() -> None:
    """`metarun-predict run=<folder> support=<file> inputs=<file> out=<file>`."""
    sys.argv[1:] = quote_paths(sys.argv[1:], ("run", "support", "inputs", "out"))
    _launch(predict_app)


if __name__ == "__main__":
    main()

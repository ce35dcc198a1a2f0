"""The `metarun` command: compose the config, run it, turn bad input and stops into clear messages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tensorboard's optional TensorFlow import stays quiet
os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # composition errors reach `main` whole, to be told in one paragraph

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from metarun.config import register_configs, register_resolvers  # noqa: E402
from metarun.errors import EXIT_USER_ERROR, composition_error, report, reported_stops  # noqa: E402
from metarun.sweeps import FailedJobs  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # absolute: found from any working directory
register_configs()
register_resolvers()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:  # raise: Hydra records the job as failed and the sweep goes on
        from metarun.run import run

        return run(cfg, Path(hydra_cfg.runtime.output_dir))
    with reported_stops(cfg.debug, resume_command(hydra_cfg.overrides.task)):
        from metarun.run import run

        return run(cfg, Path(hydra_cfg.runtime.output_dir))


def resume_command(overrides) -> str:
    """The command line that continues this run (its own overrides, the folder filled in by the caller)."""
    import shlex

    kept = [o for o in overrides if not o.startswith(("train.resume=", "hydra.run.dir="))]
    return " ".join(["metarun", *map(shlex.quote, kept), "train.resume={folder}"])


def main() -> None:
    try:
        app()
    except Exception as error:
        if FailedJobs.summary():  # a sweep raises its first failure once all jobs ran: the list says it all
            sys.exit(1)
        if isinstance(error, (HydraException, OmegaConfBaseException)):  # bad overrides, options or types
            report(composition_error(error))
            sys.exit(EXIT_USER_ERROR)
        raise


if __name__ == "__main__":
    main()

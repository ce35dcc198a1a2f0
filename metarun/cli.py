"""The `metarun` command: compose the config, run it, turn bad input into a clear message."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # tensorboard's optional TensorFlow import stays quiet

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from metarun.errors import reported_user_errors  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # absolute: found from any working directory


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    with reported_user_errors(cfg.debug):
        from metarun.run import run

        return run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()

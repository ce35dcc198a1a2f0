"""The rating baselines (`metarun.rating_baselines`) on the meta-test users of a `task=users` config: the same users
and query items as `metarun` with the same settings scores, with 95% intervals over users.

    python scripts/recommendation_baselines.py experiment=movielens [task.k_shot=5 ...] [--out baselines.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarun.config import compose  # noqa: E402
from metarun.parts import use_threads  # noqa: E402
from metarun.progress import print_results  # noqa: E402
from metarun.rating_baselines import METHODS, score_rating_baselines  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="metarun settings, e.g. experiment=movielens task.k_shot=5")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"a comma-separated subset of {METHODS}")
    parser.add_argument("--out", help="also write the scores as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = compose("config", args.overrides)
    use_threads(cfg.device)
    found = score_rating_baselines(cfg, tuple(args.methods.split(",")))
    k = cfg.task.k_shot
    print_results(f"rating baselines · {'rest as support' if k is None else f'{k} support items'}",
                  list(found.items()))  # fmt: skip
    if args.out:
        rows = {m: {metric: asdict(r) for metric, r in scores.items()} for m, scores in found.items()}
        Path(args.out).write_text(json.dumps({"overrides": args.overrides, "scores": rows}, indent=1))


if __name__ == "__main__":
    main()

"""The rating baselines (`metarun.rating_baselines`) on the meta-test users of a `task=users` config: the same users
and query items as `metarun` with the same settings scores, with 95% intervals over users.

    python scripts/recommendation_baselines.py experiment=movielens [task.k_shot=5 ...] [--out baselines.json]
        [--run outputs/.../<a run of the same settings> ...] [--test-ratings <other users' ratings>]

With --run, each run is scored on the same users too, and paired with every baseline user by user: the mean
difference (baseline's MAE less the run's; the run's nDCG@3 less the baseline's) with its 95% interval, which
is far narrower than the gap between two unpaired intervals.
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
from metarun.evaluation import episode_scores  # noqa: E402
from metarun.rating_baselines import METHODS, rating_baseline_scores  # noqa: E402
from metarun.stats import mean_with_ci, summarize  # noqa: E402
from metarun.trained import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="metarun settings, e.g. experiment=movielens task.k_shot=5")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"a comma-separated subset of {METHODS}")
    parser.add_argument("--out", help="also write the scores as JSON here")
    parser.add_argument("--run", action="append", default=[], help="a run folder to pair with the baselines")
    parser.add_argument("--test-ratings", help="score every user of this ratings file instead (other users)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = compose("config", args.overrides)
    use_threads(cfg.device)
    per_user, test = rating_baseline_scores(cfg, tuple(args.methods.split(",")), args.test_ratings)
    runs = {}
    for folder in args.run:
        model = load(folder, device="cpu")
        params = dict(model.algorithm.model.named_parameters())  # its frozen part's table is the run's own, reused
        runs[Path(folder).name] = episode_scores(model.algorithm, params, test, model.device, keep_features=True)
    found = {name: summarize(scores) for name, scores in {**per_user, **runs}.items()}
    k = cfg.task.k_shot
    print_results(f"rating baselines · {'rest as support' if k is None else f'{k} support items'}",
                  list(found.items()))  # fmt: skip
    paired = {}
    for folder, scores in runs.items():
        for method, base in per_user.items():
            paired[f"{folder} vs {method}"] = {
                "mae": mean_with_ci([b.mae - r.mae for b, r in zip(base, scores)], percent=False),
                "ndcg_3": mean_with_ci([r.ndcg_3 - b.ndcg_3 for b, r in zip(base, scores)]),
            }
    if paired:
        print_results("paired over users: the baseline's MAE less the run's, the run's nDCG@3 less the baseline's",
                      list(paired.items()))  # fmt: skip
    if args.out:
        rows = {m: {metric: asdict(r) for metric, r in scores.items()} for m, scores in found.items()}
        pairs = {m: {metric: asdict(r) for metric, r in scores.items()} for m, scores in paired.items()}
        Path(args.out).write_text(json.dumps({"overrides": args.overrides, "scores": rows, "paired": pairs}, indent=1))


if __name__ == "__main__":
    main()

"""SetFit (`metarun.setfit_baseline`) on the meta-test of a config: the first `--episodes` of the test episodes that
`metarun` with the same settings scores (or every fixed task), with the config's pretrained encoder, beside frozen
prototypes of that encoder on exactly the same episodes (paired: the same subset, its own interval), and SetFit's
time per episode.

    python scripts/setfit_baseline.py experiment=intents_liu [task.k_shot=5 ...] --episodes 100 [--out setfit.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from metarun.config import compose  # noqa: E402
from metarun.evaluation import episode_scores  # noqa: E402
from metarun.objectives import classification_scores  # noqa: E402
from metarun.parts import build, build_algorithm, build_task, use_threads  # noqa: E402
from metarun.tokenizer import make_tokenizer  # noqa: E402
from metarun.progress import phase, print_results  # noqa: E402
from metarun.setfit_baseline import EpisodeTexts, encoder_folder, fit_predict  # noqa: E402
from metarun.stats import summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="metarun settings, e.g. experiment=intents_liu task.k_shot=5")
    parser.add_argument("--episodes", type=int, default=100, help="the first N test episodes (fixed tasks: all)")
    parser.add_argument("--out", help="also write the scores as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = compose("config", args.overrides)
    use_threads(cfg.device)
    folder = encoder_folder(cfg.model)
    corpus = build(cfg.data)  # read once: the family's data, and the texts behind the episodes' tokens
    family = build_task(cfg)
    tokenizer = family.load(corpus, lambda texts: make_tokenizer(cfg.model, texts))
    test = family.test_set(tokenizer, cfg.eval.test_episodes, cfg.eval.seed + 1)
    episodes = test.episodes if test.task_names else test.episodes[: args.episodes]
    texts = EpisodeTexts(tokenizer, [*corpus.texts, *(t for tasks in family_texts(family) for t in tasks)])
    setfit, seconds = [], []
    with phase("setfit") as advance:
        for number, episode in enumerate(episodes):
            started = time.perf_counter()
            labels = [str(y) for y in episode.support_y.tolist()]
            predicted = fit_predict(folder, texts(episode.support_x), labels, texts(episode.query_x),
                                    seed=cfg.eval.seed + 1 + number, max_length=cfg.model.max_len)  # fmt: skip
            seconds.append(time.perf_counter() - started)
            setfit.append(classification_scores(torch.tensor([int(p) for p in predicted]), episode.query_y,
                                                episode.n_way))  # fmt: skip
            advance(number + 1, len(episodes))
    frozen_cfg = compose("config", [*args.overrides, "algo=prototypes"])
    torch.manual_seed(cfg.seed)
    prototypes = build_algorithm(frozen_cfg, tokenizer, torch.device("cpu"), n_train_classes=family.n_train_classes)
    frozen = episode_scores(prototypes, dict(prototypes.model.named_parameters()), episodes, torch.device("cpu"))
    found = {"setfit": summarize(setfit), "frozen prototypes (same episodes)": summarize(frozen)}
    what = "fixed tasks" if test.task_names else f"the first {len(episodes)} test episodes"
    print_results(f"SetFit · {what} · {sum(seconds) / len(seconds):.1f} s per episode", list(found.items()))
    if args.out:
        rows = {m: {metric: asdict(r) for metric, r in scores.items()} for m, scores in found.items()}
        Path(args.out).write_text(json.dumps({"overrides": args.overrides, "episodes": len(episodes),
                                              "setfit_seconds_per_episode": sum(seconds) / len(seconds),
                                              "scores": rows}, indent=1))  # fmt: skip


def family_texts(family) -> list[list[str]]:
    """The texts of a family's fixed tasks (their own files), none for sampled episodes."""
    tasks = family.tasks() if hasattr(family, "tasks") else []
    return [[*t.support.texts, *t.scored.texts] for t in tasks]


if __name__ == "__main__":
    main()

"""What a run's `metrics.json` holds, and the names of its entries: the test scores, the best validation, what the
run is about (its identity) and what produced its numbers (provenance). `metarun-report` reads runs by these names."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import metarun
from metarun.stats import METRICS, EvalResult, Scores, summarize

TEST_ACC, TEST_CI95, TEST_EPISODES = "test_acc", "test_ci95", "test_episodes"
SELECT_BY = "select_by"  # the validation score that picked best.pt; its value is under `val_key(select_by)`
# what a metrics.json row is about: a command-line key -> its entry
IDENTITY = {"algo": "algo", "model": "model", "task": "task", "data": "data", "task.n_way": "n_way",
            "task.k_shot": "k_shot", "seed": "seed"}  # fmt: skip


def val_key(select_by: str) -> str:
    """The entry of the best validation score (val_ci95 and val_episodes are that score's)."""
    return f"val_{METRICS[select_by].short}"


@dataclass
class TestScores:
    """The meta-test: accuracy over sampled episodes, or accuracy, balanced accuracy and macro-F1 of each fixed
    task (test files are often imbalanced) with their means over tasks."""

    accuracy: EvalResult
    summary: dict[str, EvalResult] | None = None  # fixed tasks only
    per_task: list[tuple[str, Scores]] = field(default_factory=list)
    label_names: dict[str, list[str]] = field(default_factory=dict)  # each fixed task's labels, by id

    @classmethod
    def of_tasks(cls, per_task: list[tuple[str, Scores]], label_names: dict[str, list[str]]) -> TestScores:
        """Fixed tasks' scores (name, scores), with each metric's mean over the tasks."""
        summary = summarize([scores for _, scores in per_task])
        return cls(summary["accuracy"], summary, per_task, label_names)

    def metrics(self) -> dict:
        """The `test_*` and `per_task_*` entries of metrics.json; the extra metrics are null for sampled episodes."""
        found = {TEST_ACC: self.accuracy.mean, TEST_CI95: self.accuracy.interval,
                 TEST_EPISODES: self.accuracy.episodes,
                 "per_task_acc": {name: s.accuracy for name, s in self.per_task}}  # fmt: skip
        for metric, key in ((m, k.short) for m, k in METRICS.items() if m != "accuracy"):
            result = self.summary.get(metric) if self.summary else None
            found[f"test_{key}"] = None if result is None else result.mean
            found[f"test_{key}_ci95"] = None if result is None else result.interval
            found[f"per_task_{key}"] = None if result is None else {n: getattr(s, metric) for n, s in self.per_task}
        found["per_task_recall"] = {  # each label's recall: where an imbalanced test file's errors fall
            name: dict(zip(self.label_names[name], s.recall)) for name, s in self.per_task
        } if self.per_task else None  # fmt: skip
        return found

    def rows(self, scored: str = "meta-test") -> list[tuple[str, EvalResult | dict]]:
        """The results table's rows: the meta-test (named `scored`: fixed tasks' dev files are not a test), then each
        fixed task."""
        return [(scored, self.summary or self.accuracy), *((n, summarize([s])) for n, s in self.per_task)]


def validation_metrics(best: EvalResult, select_by: str, best_step: int | None, cfg: DictConfig) -> dict:
    """The best validation's entries of metrics.json, and whether it came at the last outer step."""
    return {SELECT_BY: select_by, val_key(select_by): best.mean, "val_ci95": best.interval,
            "val_episodes": best.episodes, "best_step": best_step,
            "best_at_last_step": best_at_last_step(best_step, cfg)}  # fmt: skip


def best_at_last_step(best_step: int | None, cfg: DictConfig) -> bool:
    """Whether validation, having been run more than once, was still improving when meta-training ended."""
    return best_step == cfg.train.outer_steps and cfg.train.outer_steps > cfg.eval.val_interval


def title(cfg: DictConfig) -> str:
    picked, task = cfg.choices, cfg.task
    way = "" if task.n_way == 1 else f" {task.n_way}-way"  # one output: a rating, no classes
    shots = "rest as support" if task.k_shot is None else f"{task.k_shot}-shot"
    return f"{picked.algo} · {picked.model} · {picked.task}{way} {shots} · {picked.data}"


def identity(cfg: DictConfig, device) -> dict:
    """What a metrics.json row is about: the run's main choices, and what produced its numbers."""
    chosen = {entry: cfg.choices[key] for key, entry in IDENTITY.items() if key in cfg.choices}
    return {**chosen, "n_way": cfg.task.n_way, "k_shot": cfg.task.k_shot, "seed": cfg.seed, **provenance(device)}


def hparams(cfg: DictConfig) -> dict:
    """The run's options and settings as flat scalars for TensorBoard's HParams tab: `choice.algo` and the others
    (what tells the runs of a sweep apart), then every scalar setting of the parts, nested keys dotted
    (`algo.outer_optimizer.lr`). Lists (fixed tasks' files) are left out: HParams takes scalars only."""
    flat = {f"choice.{group}": option for group, option in cfg.choices.items()}
    for group in ("algo", "model", "task", "data", "train"):
        settings = flatten(OmegaConf.to_container(cfg[group], resolve=True), f"{group}.")
        flat |= {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool)) and "._" not in k}
    flat["seed"] = cfg.seed
    return flat


def flatten(node, prefix: str = "") -> dict:
    """A nested dict's leaves under dotted keys (`algo.outer_optimizer.lr`); OmegaConf has no flattening of its own,
    and this one line spares a dependency (pandas' json_normalize) for it."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}


def provenance(device) -> dict:
    """What produced the numbers, for sharing them: metarun's version and source commit (`-dirty` when tracked files
    changed; None unless metarun runs from a git checkout and git answers), torch's version, and the device (a
    `torch.device`). The same on every run of one checkout on one machine, so metrics.json stays reproducible."""
    import torch  # here only: metarun-report reads the names above without torch

    package = Path(metarun.__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            command = ["git", "--no-optional-locks", "-C", str(package.parent), *args]
            return subprocess.run(command, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return None

    commit = None
    head = git("rev-parse", "HEAD")
    # an installed copy inside some other repository (a virtualenv in a project) is not that repository's source
    tracked = git("ls-files", "--error-unmatch", "--", f"{package.name}/__init__.py")
    if head and head.returncode == 0 and tracked and tracked.returncode == 0:
        status = git("status", "--porcelain", "--untracked-files=no")
        if status and status.returncode == 0:
            commit = head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        name = f"cuda:{index} {torch.cuda.get_device_name(index)}"
    else:
        name = str(device)
    return {"metarun_version": metarun.__version__, "git_commit": commit, "torch_version": torch.__version__,
            "device": name}  # fmt: skip

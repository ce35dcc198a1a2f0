"""One run, start to end: data -> meta-splits -> tokenizer -> episodes -> model -> algorithm -> loop -> test."""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from metarun.algorithms import Algorithm, Params
from metarun.checkpoint import (
    Checkpoints,
    TrainState,
    check_same_settings,
    check_writable,
    load_checkpoint,
    same_run_config,
    write_text_atomically,
)
from metarun.config import METRICS, check_config, every_task_has_dev_file
from metarun.data import Corpus, load_local
from metarun.episodes import (
    SPLITS,
    Episode,
    EpisodeSampler,
    MetaSplit,
    class_groups,
    split_keys,
    split_rows,
)
from metarun.errors import RunInterrupted, UserError, brief
from metarun.evaluation import EvalResult, Scores, episode_scores, eval_mode, evaluate, evaluate_scores, summarize
from metarun import distributed, reporting
from metarun.distributed import Ranks
from metarun.loop import TrainSettings, build_outer_optimizer, meta_train
from metarun.reporting import RunReporter, print_config, print_results
from metarun.tokenizer import encode, make_tokenizer, padding_id
from metarun.tokens import trim_padding

RESULTS = ("metrics.json", "checkpoints/last.pt", "checkpoints/best.pt")  # what marks a folder as a run's own


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "device=cuda was asked for, but this machine has no CUDA device; use device=cpu or device=auto."
        )
    return torch.device(name)


def use_threads(device: DictConfig) -> None:
    """`device.threads`: torch's CPU threads in this process (null keeps torch's own choice, one per core)."""
    if device.threads:
        torch.set_num_threads(device.threads)


def resolve_precision(name: str, device: torch.device, prefers_bf16: bool) -> torch.dtype | None:
    """The autocast dtype for the encoder's forward passes, None for float32: `auto` is bf16 on CUDA for models
    that prefer it (pretrained encoders, trained for it), float32 otherwise."""
    if name == "bf16" or (name == "auto" and prefers_bf16 and device.type == "cuda"):
        return torch.bfloat16
    return None


def build(node: DictConfig, **kwargs):
    """Instantiate a config node's `_target_`, its sub-nodes' too (an outer optimizer as a partial)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):  # Hydra wraps it; the user needs the original message
            raise error.__cause__ from None
        raise


def make_samplers(corpus: Corpus, tokens: torch.Tensor, task: DictConfig, rows: dict[str, list[int]]):
    """One EpisodeSampler per split named in `rows` (its row indices)."""
    by_domain = task.split_by == "domain"
    row_classes = corpus.class_keys(by_domain)
    samplers = {}
    for name, index in rows.items():
        if not index:  # a split asked to be empty: fixed tasks stand in for it
            continue
        groups = class_groups(
            [row_classes[i] for i in index], [corpus.domains[i] for i in index] if by_domain else None
        )
        n_query = task.n_query if name != "train" or task.get("meta_train_query") is None else task.meta_train_query
        n_way = task.n_way if name != "train" or task.get("meta_train_way") is None else task.meta_train_way
        samplers[name] = EpisodeSampler(
            tokens[index], [row_classes[i] for i in index], groups, n_way, task.k_shot, n_query,
            split_name=name, drop_small_classes=task.drop_small_classes, fixed_labels=task.labels == "fixed",
            natural_query=task.query == "natural",
        )  # fmt: skip
    return samplers


def support_draw(corpus: Corpus, shots: int, seed: str, file: str) -> Corpus:
    """`shots` examples of each label of `corpus`, the same ones for the same `seed` (in the file's order)."""
    keep = []
    for label in sorted(set(corpus.labels)):
        rows = [i for i, found in enumerate(corpus.labels) if found == label]
        if len(rows) < shots:
            raise UserError(
                f"task.eval_shots={shots} needs {shots} examples of each label in {file}, but {label!r} has "
                f"{len(rows)}; lower task.eval_shots or leave it null to adapt on the whole file."
            )
        keep += random.Random(f"{seed}:{label}").sample(rows, shots)
    keep.sort()
    return Corpus([corpus.texts[i] for i in keep], [corpus.labels[i] for i in keep], None, source=corpus.source)


@dataclass(frozen=True)
class FixedTask:
    """One fixed evaluation task as read: the examples it adapts on, the file it is scored on, its labels by id."""

    name: str
    support: Corpus
    scored: Corpus
    labels: list[str]

    def ids(self, labels: list[str]) -> torch.Tensor:
        """Label names as this task's label ids."""
        index = {label: i for i, label in enumerate(self.labels)}
        return torch.tensor([index[label] for label in labels])


def fixed_tasks(task: DictConfig, data: DictConfig, scored: str = "test") -> list[FixedTask]:
    """The ARSC protocol's tasks: each adapts on a held-out domain's own train file (or `task.eval_shots` per label
    drawn once from it) and is scored on its whole `scored` file (test, or dev for validation)."""
    tasks = []
    columns = {k: data[k] for k in ("text_column", "label_column", "max_chars") if k in data}
    for spec in task.eval_tasks:
        support = load_local(spec.train, **columns, setting=f"task.eval_tasks {spec.name}'s train")
        query = load_local(spec[scored], **columns, setting=f"task.eval_tasks {spec.name}'s {scored}")
        if task.eval_shots:
            support = support_draw(support, task.eval_shots, f"{task.split.seed}:{spec.name}", spec.train)
        labels = sorted(set(support.labels))
        if len(labels) != task.n_way:
            raise UserError(
                f"Evaluation task {spec.name!r}: {spec.train} has {len(labels)} labels ({brief(labels)}), but "
                f"task.n_way={task.n_way}; set task.n_way={len(labels)}."
            )
        unknown = sorted(set(query.labels) - set(labels))
        if unknown:
            raise UserError(
                f"Evaluation task {spec.name!r}: {spec[scored]} has labels {brief(unknown)} absent from {spec.train}."
            )
        tasks.append(FixedTask(spec.name, support, query, labels))
    return tasks


def fixed_task_episodes(
    task: DictConfig, data: DictConfig, tokenizer, scored: str = "test"
) -> list[tuple[str, Episode, list[str]]]:
    """`fixed_tasks` as episodes: each task's name, episode, and label names by id."""
    return [(t.name, Episode(
        support_x=trim_padding(encode(tokenizer, t.support.texts)),
        support_y=t.ids(t.support.labels),
        query_x=trim_padding(encode(tokenizer, t.scored.texts)),
        query_y=t.ids(t.scored.labels),
        class_ids=torch.arange(len(t.labels)),
    ), t.labels) for t in fixed_tasks(task, data, scored)]  # fmt: skip


def split_corpus(cfg: DictConfig) -> tuple[Corpus, MetaSplit, dict[str, list[int]]]:
    """The data, its meta-split (of classes or domains) and each split's row indices."""
    corpus: Corpus = build(cfg.data)
    keys = corpus.labels if cfg.task.split_by == "class" else corpus.require_domains()
    split = split_keys(keys, cfg.task.split.val, cfg.task.split.test, cfg.task.split.seed, cfg.task.split_by)
    return corpus, split, split_rows(keys, split)


def prepare_episodes(cfg: DictConfig) -> tuple[Tokenizer, dict[str, EpisodeSampler], MetaSplit]:
    """Load the data, split it, fit the tokenizer on meta-train text, and build one sampler per split."""
    corpus, split, rows = split_corpus(cfg)
    tokenizer = make_tokenizer(cfg.model, [corpus.texts[i] for i in rows["train"]])
    return tokenizer, make_samplers(corpus, encode(tokenizer, corpus.texts), cfg.task, rows), split


def validation_episodes(cfg: DictConfig, tokenizer: Tokenizer, samplers: dict[str, EpisodeSampler]) -> list[Episode]:
    """What every validation scores: each fixed task's dev file when they all name one, else the same
    `eval.val_episodes` meta-val episodes."""
    if every_task_has_dev_file(cfg.task):
        return [episode for _, episode, _ in fixed_task_episodes(cfg.task, cfg.data, tokenizer, scored="dev")]
    return samplers["val"].fixed_episodes(cfg.eval.val_episodes, cfg.eval.seed)


def meta_training_view(
    algorithm: Algorithm, sampler: EpisodeSampler, val_episodes: list[Episode], device: torch.device
) -> Algorithm:
    """The algorithm as meta-training runs it: reading what meta-training leaves unchanged (the frozen lower layers'
    hidden states, or a frozen encoder's features) from a table of every meta-train and validation text."""
    tokens = [sampler.tokens, *(x for e in val_episodes for x in (e.support_x, e.query_x))]
    tokens = [t.to(device) for t in tokens]
    started = time.perf_counter()
    with eval_mode(algorithm.model):  # the frozen part is computed once, without dropout
        view = algorithm.cached(dict(algorithm.model.named_parameters()), tokens, algorithm.trained_names())
    if view is not algorithm:
        layers = view.cache.layers
        part = "features" if layers is None else "first layer" if layers == 1 else f"first {layers} layers"
        reporting.console.print(
            f"Meta-training leaves the encoder's {part} unchanged: computed once for {len(view.cache.values)} texts "
            f"in {time.perf_counter() - started:.0f} s, read from memory from now on."
        )
    return view


def write_run_files(output_dir: Path, tokenizer: Tokenizer, split: MetaSplit) -> None:
    """The tokenizer and the meta-split, beside the run's checkpoints, for whoever uses the run later."""
    write_text_atomically(output_dir / "tokenizer.json", tokenizer.to_str(pretty=True))
    write_text_atomically(output_dir / "splits.json", json.dumps({n: getattr(split, n) for n in SPLITS}, indent=1))


def build_algorithm(cfg: DictConfig, tokenizer: Tokenizer, n_train_classes: int, device: torch.device) -> Algorithm:
    """The model (initialised from the current torch seed) on `device`, inside the configured algorithm;
    `n_train_classes` sizes the supervised baseline's pre-training head."""
    architecture = {k: v for k, v in cfg.model.items() if k != "tokenizer"}  # the tokenizer is built: it sizes it
    model = build(
        OmegaConf.create(architecture), vocab_size=tokenizer.get_vocab_size(), pad_id=padding_id(tokenizer),
        n_classes=cfg.task.n_way,
    ).to(device)  # fmt: skip
    algorithm = build(
        cfg.algo, model=model, n_train_classes=n_train_classes, diagnostic_scores=cfg.train.diagnostic_scores,
        autocast_dtype=resolve_precision(cfg.device.precision, device, model.prefers_bf16),
    )  # fmt: skip
    way = cfg.task.get("meta_train_way")
    if way not in (None, cfg.task.n_way) and (not algorithm.any_n_way or cfg.task.labels == "fixed"):
        raise UserError(
            f"task.meta_train_way={way} differs from task.n_way={cfg.task.n_way}, which only an algorithm that builds "
            f"its head from each support set can train with (algo=protonet), and only with task.labels=permuted; "
            f"this run has {type(algorithm).__name__} with task.labels={cfg.task.labels}. Remove "
            "task.meta_train_way, or set it to task.n_way."
        )
    return algorithm


def claim_run_folder(output_dir: Path, cfg: DictConfig) -> tuple[Path, dict | None]:
    """The folder this run writes to, and with `train.resume` the stopped run's `last.pt` as read: a fresh folder,
    or the stopped run's own, whose `last.pt` must exist and hold this config's run (checked before any data is
    read). A folder holding another run's results is refused: a run never reads what it did not write."""
    if cfg.train.resume:
        folder = Path(cfg.train.resume)
        last = folder / "checkpoints" / "last.pt"
        if not last.is_file():
            raise UserError(
                f"train.resume={cfg.train.resume!r} has no checkpoints/last.pt to continue from; give the folder of a "
                "run that saved a checkpoint (a run saves one at each validation and when it is stopped)."
            )
        saved = load_checkpoint(last)
        check_same_settings(saved, same_run_config(OmegaConf.to_container(cfg, resolve=True)), last)
        check_writable(folder / "checkpoints")
        return folder, saved
    refuse_taken_folder(output_dir)
    for folder in (output_dir, output_dir / "checkpoints"):
        check_writable(folder)
    return output_dir, None


def refuse_taken_folder(output_dir: Path) -> None:
    """A new run never writes into a folder that holds another run's results."""
    taken = [name for name in RESULTS if (output_dir / name).exists()]
    if taken:
        raise UserError(
            f"{output_dir} already holds another run's results ({', '.join(taken)}); a run never writes over them. "
            f"Continue that run with train.resume={output_dir}, or give this one another hydra.run.dir (the "
            "default folder is new for every run)."
        )


def run(cfg: DictConfig, output_dir: Path) -> float:
    """Meta-train, validate, test the best checkpoint; returns the best validation score (`eval.select_by`) for
    sweepers. Under torchrun every process runs this; rank 0 claims the folder and alone writes and prints."""
    check_config(cfg)
    use_threads(cfg.device)
    ranks, device_name = distributed.start(cfg.device.name)
    try:
        distributed.check_meta_batch(cfg.train.meta_batch_size, ranks)
        reporting.console.quiet = not ranks.is_main
        output_dir, stopped = ranks.from_main(claim_run_folder(output_dir, cfg) if ranks.is_main else None)
        try:
            return _run(cfg, output_dir, stopped, ranks, resolve_device(device_name))
        except RunInterrupted as stop:
            stop.run_folder = output_dir
            raise
    finally:
        distributed.stop()


def _run(cfg: DictConfig, output_dir: Path, stopped: dict | None, ranks: Ranks, device: torch.device) -> float:
    """The run proper; `stopped` is the checkpoint a resumed run continues from."""
    torch.manual_seed(cfg.seed)
    tokenizer, samplers, split = prepare_episodes(cfg)
    print_config(cfg, saved_in_sweeps=True)  # after the data: a data error is the whole output, not after the config
    algorithm = build_algorithm(cfg, tokenizer, samplers["train"].n_classes, device)
    if ranks.world > 1:  # one starting point for all, and each process its own draws (dropout, fresh heads)
        ranks.copy_from_main(list(algorithm.trained_tensors().values()))
        torch.manual_seed(cfg.seed + ranks.rank)
    val_episodes = validation_episodes(cfg, tokenizer, samplers)
    checkpoints = Checkpoints(output_dir / "checkpoints", OmegaConf.to_container(cfg, resolve=True), tokenizer.to_str())
    checkpoints.prepare(algorithm)
    settings = TrainSettings(
        cfg.train.outer_steps,
        cfg.train.meta_batch_size,
        cfg.train.grad_clip,
        cfg.eval.val_interval,
        cfg.eval.select_by,
        cfg.train.average_from,
    )
    optimizer, schedule = build_outer_optimizer(algorithm, instantiate(cfg.train.lr_schedule))
    rng = random.Random(cfg.seed)
    state = TrainState()
    if stopped is not None:  # refused before anything is written when the data changed since
        state = checkpoints.resume(stopped, algorithm, optimizer, schedule, rng)
    if ranks.is_main:
        write_run_files(output_dir, tokenizer, split)
    if not algorithm.meta_trains:  # the weights it tests, kept so that metarun-eval and load() serve it too
        checkpoints.save(algorithm, optimizer, schedule, rng, state, is_best=True)

    log_dir = output_dir / "tensorboard" if ranks.is_main else None
    with RunReporter(log_dir, cfg.train.outer_steps, state.step) as reporter:
        started = time.perf_counter()
        if algorithm.meta_trains:
            state = meta_train(
                meta_training_view(algorithm, samplers["train"], val_episodes, device), samplers["train"],
                val_episodes, settings, reporter, checkpoints, rng, device, optimizer, schedule, state,
            )  # fmt: skip
        train_seconds = time.perf_counter() - started
        best_step = checkpoints.load_best(algorithm)
        params = dict(algorithm.model.named_parameters())
        best_val = state.best or evaluate_scores(algorithm, params, val_episodes, device)[cfg.eval.select_by]
        started = time.perf_counter()
        test = score_test(cfg, algorithm, params, tokenizer, samplers.get("test"), device)
        val_key = f"val_{METRICS[cfg.eval.select_by]}"  # val_ci95 and val_episodes are that score's
        timing = {
            "meta_train_seconds": train_seconds,
            "outer_step_median_seconds": statistics.median(state.step_seconds) if state.step_seconds else None,
            "test_seconds": time.perf_counter() - started,
            "processes": ranks.world,
        }
        metrics = {
            **test.metrics(),
            "select_by": cfg.eval.select_by, val_key: best_val.mean, "val_ci95": best_val.interval,
            "val_episodes": best_val.episodes,
            "best_step": best_step, "best_at_last_step": best_at_last_step(best_step, cfg),
            **identity(cfg, device),
        }  # fmt: skip
        if ranks.is_main:
            write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=1))
            write_text_atomically(output_dir / "timing.json", json.dumps(timing, indent=1))
        final = ("test_acc", val_key, "test_balanced_acc", "test_macro_f1")
        reporter.log_hparams(hparams(cfg), {f"hparam/{k}": metrics[k] for k in final if metrics[k] is not None})

    print_results(title(cfg), [("meta-val (best)", {cfg.eval.select_by: best_val}), *test.rows()])
    if metrics["best_at_last_step"]:
        reporting.console.print(
            f"[yellow]The best validation came at the last outer step ({best_step} of {cfg.train.outer_steps}): the "
            "budget may be what limits this run; more outer steps (train.outer_steps) may still help."
        )
    return best_val.mean


def best_at_last_step(best_step: int | None, cfg: DictConfig) -> bool:
    """Whether validation, having been run more than once, was still improving when meta-training ended."""
    return best_step == cfg.train.outer_steps and cfg.train.outer_steps > cfg.eval.val_interval


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
        found = {"test_acc": self.accuracy.mean, "test_ci95": self.accuracy.interval,
                 "test_episodes": self.accuracy.episodes,
                 "per_task_acc": {name: s.accuracy for name, s in self.per_task}}  # fmt: skip
        for metric, key in ((m, k) for m, k in METRICS.items() if m != "accuracy"):
            result = self.summary[metric] if self.summary else None
            found[f"test_{key}"] = None if result is None else result.mean
            found[f"test_{key}_ci95"] = None if result is None else result.interval
            found[f"per_task_{key}"] = None if result is None else {n: getattr(s, metric) for n, s in self.per_task}
        found["per_task_recall"] = {  # each label's recall: where an imbalanced test file's errors fall
            name: dict(zip(self.label_names[name], s.recall)) for name, s in self.per_task
        } if self.per_task else None  # fmt: skip
        return found

    def rows(self) -> list[tuple[str, EvalResult | dict]]:
        """The results table's rows: the meta-test, then each fixed task."""
        return [("meta-test", self.summary or self.accuracy), *((n, summarize([s])) for n, s in self.per_task)]


def score_test(cfg: DictConfig, algorithm: Algorithm, params: Params, tokenizer: Tokenizer,
               sampler: EpisodeSampler | None, device: torch.device, scored: str = "test") -> TestScores:  # fmt: skip
    """Adapt and score on the fixed evaluation tasks' `scored` files, or on `eval.test_episodes` episodes of
    `sampler`; adaptation's own random draws (a fresh head) come from `eval.seed`, so every command that tests a run
    gets the same numbers."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.eval.seed + 1)
        if cfg.task.eval_tasks:  # one score per fixed task; the intervals are over tasks
            fixed = fixed_task_episodes(cfg.task, cfg.data, tokenizer, scored)
            per_task = [(name, episode_scores(algorithm, params, [episode], device)[0]) for name, episode, _ in fixed]
            return TestScores.of_tasks(per_task, {name: labels for name, _, labels in fixed})
        episodes = sampler.fixed_episodes(cfg.eval.test_episodes, cfg.eval.seed + 1)
        return TestScores(evaluate(algorithm, params, episodes, device))


def title(cfg: DictConfig) -> str:
    picked = cfg.choices
    return f"{picked.algo} · {picked.model} · {picked.task} {cfg.task.n_way}-way {cfg.task.k_shot}-shot · {picked.data}"


def identity(cfg: DictConfig, device: torch.device) -> dict:
    """What a metrics.json row is about: the run's main choices, and what produced its numbers."""
    return {**{group: cfg.choices[group] for group in ("algo", "model", "task", "data")},
            "n_way": cfg.task.n_way, "k_shot": cfg.task.k_shot, "seed": cfg.seed, **provenance(device)}  # fmt: skip


# what `metarun-eval` may change in a run's settings: the data and tasks it is scored on, and how it adapts there
EVAL_GROUPS = ("data", "task", "eval", "device")  # any setting inside these
# the algorithm's test-time settings it may change, each with whether a run's algorithm (its _target_) has it
EVAL_ALGO_SETTINGS = {
    "algo.eval_inner_steps": lambda target: not target.endswith(".ProtoNet"),  # gradient steps on the support set
    "algo.transductive_steps": lambda target: target.endswith(".ProtoNet"),  # prototypes refined on the queries
}
EVAL_CHANGES = (*EVAL_GROUPS, "debug", *EVAL_ALGO_SETTINGS)


def evaluate_run(cfg: DictConfig, output_dir: Path, overrides: list[str]) -> float:
    """`metarun-eval`: score a run's checkpoint with its own tokenizer and algorithm, changed only by the command
    line's `overrides`, on its test split or, when they change the data, on every class (or domain) of that data.
    The metrics go to `output_dir`; the run's folder is only read. Returns the test accuracy."""
    from metarun.trained import checkpoint_path, model_from_checkpoint

    check_config(cfg, extra=EVAL_ALGO_SETTINGS)  # `+algo.transductive_steps`: a setting of the run's algorithm
    saved = load_checkpoint(checkpoint_path(cfg.run, cfg.checkpoint))  # read once: its config, then its weights
    changed = _changed_settings(overrides)
    run_cfg = OmegaConf.create(saved["config"])
    for key in changed:
        OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), merge=False)
        if key in cfg.choices:  # another option of a group: its name too
            run_cfg.choices[key] = cfg.choices[key]
    _refuse_missing_dev_files(cfg.scored, run_cfg.task)
    foreign = [k for k in changed if k in EVAL_ALGO_SETTINGS and not EVAL_ALGO_SETTINGS[k](run_cfg.algo._target_)]
    if foreign:
        raise UserError(
            f"{', '.join(foreign)}: not a setting of {run_cfg.choices.algo}, the algorithm {cfg.run} was trained with. "
            "algo.eval_inner_steps counts the gradient steps of algorithms that take them (not protonet or "
            "prototypes); algo.transductive_steps refines the prototypes of protonet and prototypes runs. Remove it."
        )
    print_config(run_cfg)
    use_threads(run_cfg.device)
    model = model_from_checkpoint(saved, run_cfg.device.name, run_cfg)
    sampler = None
    if not run_cfg.task.eval_tasks:
        own_data = OmegaConf.to_container(run_cfg.data, resolve=True) == saved["config"]["data"]
        if own_data:
            _refuse_other_split(run_cfg, saved["config"]["task"])
        corpus, _, rows = split_corpus(run_cfg) if own_data else _all_test(run_cfg)
        sampler = make_samplers(corpus, encode(model.tokenizer, corpus.texts), run_cfg.task, {"test": rows["test"]})
        sampler = sampler["test"]
    params = model.head_of_size(run_cfg.task.n_way)
    test = score_test(run_cfg, model.algorithm, params, model.tokenizer, sampler, model.device, cfg.scored)
    metrics = {**test.metrics(), "scored": cfg.scored, "run": str(Path(cfg.run).resolve()),
               "checkpoint": cfg.checkpoint, "step": model.step,
               "changed": {k: _plain(OmegaConf.select(run_cfg, k)) for k in changed},
               **identity(run_cfg, model.device)}  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=1))
    files = f" · its {cfg.scored} files" if run_cfg.task.eval_tasks else ""
    print_results(f"{title(run_cfg)} · {cfg.checkpoint}.pt of {cfg.run}{files}", test.rows())
    return test.accuracy.mean


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _changed_settings(overrides) -> list[str]:
    """The settings the command line changes, each checked against what an evaluation may change."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))]
    keys = [k for k in keys if k not in ("run", "checkpoint", "scored")]
    refused = [k for k in keys if not (k in EVAL_CHANGES or k.split(".")[0] in EVAL_GROUPS)]
    if refused:
        raise UserError(
            f"metarun-eval cannot change {', '.join(refused)}: the checkpoint was trained with the run's own model and "
            f"algorithm. It may change: {', '.join(EVAL_CHANGES)} (and anything inside data, task, eval and device)."
        )
    return keys


def _refuse_missing_dev_files(scored: str, task: DictConfig) -> None:
    """`scored=dev` reads each fixed task's dev file: there must be fixed tasks, and each must name one."""
    if scored == "dev" and not every_task_has_dev_file(task):
        lacking = [t.name for t in task.eval_tasks if not t.dev]
        which = f"these fixed tasks name no dev file: {', '.join(lacking)}" if lacking else "the run has no fixed tasks"
        raise UserError(
            f"scored=dev scores each fixed task's dev file, but {which}. Give every task in task.eval_tasks a dev "
            "file ({name: ..., train: ..., test: ..., dev: ...}), or score the test files (scored=test)."
        )


def _refuse_other_split(cfg: DictConfig, run_task: dict) -> None:
    """On the run's own data only its own meta-test split is unseen: another split would test on meta-training
    classes."""
    for key in ("split_by", "split"):
        now = _plain(cfg.task[key])
        if now != run_task[key]:
            raise UserError(
                f"task.{key}={now!r} differs from the run's own ({run_task[key]!r}): on the run's own data another "
                "split would score classes the run meta-trained on. Keep the run's split, or give other data."
            )


def _all_test(cfg: DictConfig) -> tuple[Corpus, None, dict[str, list[int]]]:
    """Other data than the run's: every one of its classes (or domains) is new to the run, so all of it is test."""
    corpus: Corpus = build(cfg.data)
    return corpus, None, {"test": list(range(len(corpus)))}


def hparams(cfg: DictConfig) -> dict:
    """The run's settings as flat scalars for TensorBoard's HParams tab."""
    flat = {}
    for group in ("algo", "model", "task", "data", "train"):
        for key, value in cfg[group].items():
            if isinstance(value, (int, float, str, bool)) and not key.startswith("_"):
                flat[f"{group}.{key}"] = value
    flat["seed"] = cfg.seed
    return flat


def provenance(device: torch.device) -> dict:
    """What produced the numbers, for sharing them: metarun's version and source commit (`-dirty` when tracked files
    changed; None unless metarun runs from a git checkout and git answers), torch's version, and the device. The
    same on every run of one checkout on one machine, so metrics.json stays reproducible."""
    import subprocess

    import metarun

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

"""One run, start to end: data -> meta-splits -> tokenizer -> episodes -> model -> algorithm -> loop -> test."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from metarun.algorithms import Algorithm
from metarun.checkpoint import Checkpoints, TrainState, check_writable, write_text_atomically
from metarun.config import check_config
from metarun.data import Corpus, load_local
from metarun.episodes import SPLITS, Episode, EpisodeSampler, class_groups, split_keys, split_rows, trim_padding
from metarun.errors import RunInterrupted, UserError, brief
from metarun.evaluation import evaluate, mean_with_ci
from metarun.loop import TrainSettings, build_outer_optimizer, meta_train
from metarun.reporting import RunReporter, print_config, print_results
from metarun.tokenizer import encode, make_tokenizer, padding_id

NOT_CONSTRUCTOR_ARGS = ("name", "vocab_size", "pad_id", "outer_optimizer", "outer_lr", "eps")
RESULTS = ("metrics.json", "checkpoints/last.pt", "checkpoints/best.pt")  # what marks a folder as a run's own


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "device=cuda was asked for, but this machine has no CUDA device; use device=cpu or device=auto."
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, pretrained: bool) -> torch.dtype | None:
    """The autocast dtype for the encoder's forward passes, None for float32: `auto` is bf16 for pretrained
    encoders on CUDA (what they are trained for), float32 otherwise."""
    if name == "bf16" or (name == "auto" and pretrained and device.type == "cuda"):
        return torch.bfloat16
    return None


def build(node: DictConfig, **kwargs):
    """Instantiate a config group's `_target_`, leaving out the keys that describe rather than construct."""
    try:
        return instantiate({k: v for k, v in node.items() if k not in NOT_CONSTRUCTOR_ARGS}, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):  # Hydra wraps it; the user needs the original message
            raise error.__cause__ from None
        raise


def make_samplers(corpus: Corpus, tokens: torch.Tensor, task: DictConfig, rows: dict[str, list[int]]):
    by_domain = task.split_by == "domain"
    row_classes = corpus.class_keys(by_domain)
    samplers = {}
    for name in SPLITS:
        index = rows[name]
        groups = class_groups(
            [row_classes[i] for i in index], [corpus.domains[i] for i in index] if by_domain else None
        )
        n_query = task.n_query if name != "train" or task.get("meta_train_query") is None else task.meta_train_query
        samplers[name] = EpisodeSampler(
            tokens[index], [row_classes[i] for i in index], groups, task.n_way, task.k_shot, n_query,
            split_name=name, drop_small_classes=task.drop_small_classes,
        )  # fmt: skip
    return samplers


def fixed_task_episodes(task: DictConfig, data: DictConfig, tokenizer) -> list[tuple[str, Episode]]:
    """The ARSC protocol: adapt on a held-out domain's own train file, score its whole test file."""
    episodes = []
    columns = {k: data[k] for k in ("text_column", "label_column", "max_chars") if k in data}
    for spec in task.eval_tasks:
        support, query = load_local(spec.train, **columns), load_local(spec.test, **columns)
        labels = sorted(set(support.labels))
        if len(labels) != task.n_way:
            raise UserError(
                f"Evaluation task {spec.name!r}: {spec.train} has {len(labels)} labels ({brief(labels)}), but "
                f"task.n_way={task.n_way}; set task.n_way={len(labels)}."
            )
        unknown = sorted(set(query.labels) - set(labels))
        if unknown:
            raise UserError(
                f"Evaluation task {spec.name!r}: {spec.test} has labels {brief(unknown)} absent from {spec.train}."
            )
        ids = {label: i for i, label in enumerate(labels)}
        episodes.append((spec.name, Episode(
            support_x=trim_padding(encode(tokenizer, support.texts)),
            support_y=torch.tensor([ids[label] for label in support.labels]),
            query_x=trim_padding(encode(tokenizer, query.texts)),
            query_y=torch.tensor([ids[label] for label in query.labels]),
            class_ids=torch.arange(len(labels)),
        )))  # fmt: skip
    return episodes


def prepare_episodes(cfg: DictConfig, output_dir: Path) -> tuple[Tokenizer, dict[str, EpisodeSampler]]:
    """Load the data, split it, fit the tokenizer on meta-train text, and build one sampler per split."""
    corpus: Corpus = build(cfg.data)
    keys = corpus.labels if cfg.task.split_by == "class" else corpus.require_domains()
    split = split_keys(keys, cfg.task.split.val, cfg.task.split.test, cfg.task.split.seed, cfg.task.split_by)
    rows = split_rows(keys, split)
    tokenizer = make_tokenizer(cfg.model, [corpus.texts[i] for i in rows["train"]])
    write_text_atomically(output_dir / "tokenizer.json", tokenizer.to_str(pretty=True))
    write_text_atomically(output_dir / "splits.json", json.dumps({n: getattr(split, n) for n in SPLITS}, indent=1))
    return tokenizer, make_samplers(corpus, encode(tokenizer, corpus.texts), cfg.task, rows)


def build_algorithm(
    cfg: DictConfig, tokenizer: Tokenizer, samplers: dict[str, EpisodeSampler], device: torch.device
) -> Algorithm:
    """The model (initialised from the current torch seed) on `device`, inside the configured algorithm."""
    sizes = {"vocab_size": tokenizer.get_vocab_size(), "n_classes": cfg.task.n_way}
    if "pad_id" in cfg.model:  # pretrained models get their tokenizer's padding id back (metarun pads with 0)
        sizes["pad_id"] = padding_id(tokenizer)
    model = build(cfg.model, **sizes).to(device)
    extra = {"n_train_classes": len(samplers["train"].classes)} if "n_train_classes" in cfg.algo else {}
    algorithm: Algorithm = build(cfg.algo, model=model, **extra)
    algorithm.diagnostic_scores = cfg.train.diagnostic_scores
    algorithm.autocast_dtype = resolve_precision(cfg.device.precision, device, "pad_id" in cfg.model)
    return algorithm


def claim_run_folder(output_dir: Path, resume: str | None) -> Path:
    """The folder this run writes to: a fresh one, or with `train.resume` the stopped run's own, which must hold
    its `last.pt`. A folder holding another run's results is refused: a run never reads what it did not write."""
    if resume:
        folder = Path(resume)
        if not (folder / "checkpoints" / "last.pt").is_file():
            raise UserError(
                f"train.resume={resume!r} has no checkpoints/last.pt to continue from; give the folder of a run "
                "that saved a checkpoint (a run saves one at each validation and when it is stopped)."
            )
        check_writable(folder / "checkpoints")
        return folder
    taken = [name for name in RESULTS if (output_dir / name).exists()]
    if taken:
        raise UserError(
            f"{output_dir} already holds another run's results ({', '.join(taken)}); a run never writes over them. "
            f"Continue that run with train.resume={output_dir}, or give this one another hydra.run.dir (the "
            "default folder is new for every run)."
        )
    for folder in (output_dir, output_dir / "checkpoints"):
        check_writable(folder)
    return output_dir


def run(cfg: DictConfig, output_dir: Path) -> float:
    """Meta-train, validate, test the best checkpoint; returns the best validation accuracy (for sweepers)."""
    check_config(cfg)
    output_dir = claim_run_folder(output_dir, cfg.train.resume)
    try:
        return _run(cfg, output_dir)
    except RunInterrupted as stop:
        stop.run_folder = output_dir
        raise


def _run(cfg: DictConfig, output_dir: Path) -> float:
    print_config(cfg)
    device = resolve_device(cfg.device.name)
    torch.manual_seed(cfg.seed)
    tokenizer, samplers = prepare_episodes(cfg, output_dir)
    algorithm = build_algorithm(cfg, tokenizer, samplers, device)
    val_episodes = samplers["val"].fixed_episodes(cfg.eval.val_episodes, cfg.eval.seed)
    checkpoints = Checkpoints(output_dir / "checkpoints", OmegaConf.to_container(cfg, resolve=True), tokenizer.to_str())
    checkpoints.prepare(algorithm)
    settings = TrainSettings(
        cfg.train.outer_steps, cfg.train.meta_batch_size, cfg.algo.outer_optimizer, cfg.algo.outer_lr,
        cfg.train.lr_schedule, cfg.train.grad_clip, cfg.eval.val_interval,
    )  # fmt: skip
    optimizer, schedule = build_outer_optimizer(algorithm, settings)
    rng = random.Random(cfg.seed)
    state = TrainState()
    if cfg.train.resume and algorithm.meta_trains:
        state = checkpoints.resume(algorithm, optimizer, schedule, rng)

    with RunReporter(output_dir / "tensorboard", cfg.train.outer_steps, state.step) as reporter:
        started = time.perf_counter()
        if algorithm.meta_trains:
            state = meta_train(
                algorithm, samplers["train"], val_episodes, settings, reporter, checkpoints, rng, device,
                optimizer, schedule, state,
            )  # fmt: skip
        train_seconds = time.perf_counter() - started
        best_step = checkpoints.load_best(algorithm)
        params = dict(algorithm.model.named_parameters())
        best_val = state.best or evaluate(algorithm, params, val_episodes, device)
        started = time.perf_counter()
        if cfg.task.eval_tasks:  # one score per fixed task; the interval is over tasks
            fixed = fixed_task_episodes(cfg.task, cfg.data, tokenizer)
            per_task = [(name, evaluate(algorithm, params, [episode], device)) for name, episode in fixed]
            test = mean_with_ci([r.mean for _, r in per_task])
        else:
            test_episodes = samplers["test"].fixed_episodes(cfg.eval.test_episodes, cfg.eval.seed + 1)
            per_task, test = [], evaluate(algorithm, params, test_episodes, device)
        timing = {
            "meta_train_seconds": train_seconds,
            "outer_step_median_seconds": statistics.median(state.step_seconds) if state.step_seconds else None,
            "test_seconds": time.perf_counter() - started,
        }
        metrics = {
            "test_acc": test.mean, "test_ci95": test.ci95, "test_episodes": test.episodes,
            "val_acc": best_val.mean, "val_ci95": best_val.ci95, "val_episodes": best_val.episodes,
            "best_step": best_step, "per_task_acc": {name: r.mean for name, r in per_task},
            "algo": cfg.algo.name, "model": cfg.model.name, "task": cfg.task.name, "data": cfg.data.name,
            "n_way": cfg.task.n_way, "k_shot": cfg.task.k_shot, "seed": cfg.seed,
        }  # fmt: skip
        write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=1))
        write_text_atomically(output_dir / "timing.json", json.dumps(timing, indent=1))
        reporter.log_hparams(hparams(cfg), {"hparam/test_acc": test.mean, "hparam/val_acc": best_val.mean})

    task = f"{cfg.task.name} {cfg.task.n_way}-way {cfg.task.k_shot}-shot"
    title = f"{cfg.algo.name} · {cfg.model.name} · {task} · {cfg.data.name}"
    print_results(title, [("meta-val (best)", best_val), ("meta-test", test), *per_task])
    return best_val.mean


def hparams(cfg: DictConfig) -> dict:
    """The run's settings as flat scalars for TensorBoard's HParams tab."""
    flat = {}
    for group in ("algo", "model", "task", "data", "train"):
        for key, value in cfg[group].items():
            if isinstance(value, (int, float, str, bool)) and not key.startswith("_"):
                flat[f"{group}.{key}"] = value
    flat["seed"] = cfg.seed
    return flat

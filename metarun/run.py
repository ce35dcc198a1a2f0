"""`metarun`: one run, start to end. Build the parts (the task family over the data, the tokenizer, the model inside
its algorithm), meta-train, test the best checkpoint, write `metrics.json`."""

from __future__ import annotations

import contextlib
import json
import random
import shlex
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metarun import distributed, progress
from metarun.checkpoint import Checkpoints, TrainState, stopped_run
from metarun.config import check_config
from metarun.distributed import Ranks
from metarun.errors import RunInterrupted
from metarun.evaluation import evaluate_scores, score_test
from metarun.objectives import check_select_by
from metarun.loop import TrainSettings, build_outer_optimizer, meta_train, meta_training_view
from metarun.parts import build_algorithm, load_task, resolve_device, use_threads
from metarun.progress import in_sweep, phase, print_config, print_results, print_where
from metarun.reporter import RunReporter
from metarun.results import TEST_ACC, hparams, identity, title, val_key, validation_metrics
from metarun.run_folder import claim_run_folder, folder_lock, write_text_atomically
from metarun.stats import METRICS


def run(cfg: DictConfig, output_dir: Path) -> float:
    """Meta-train, validate, test the best checkpoint; returns the best validation score (`eval.select_by`) for
    sweepers, negated for an error (MAE, RMSE) so that higher is always better. Under torchrun every process runs
    this; rank 0 claims the folder and alone writes and prints."""
    check_config(cfg)
    use_threads(cfg.device)
    ranks, device_name = distributed.start(cfg.device.name)
    try:
        distributed.check_meta_batch(cfg.train.meta_batch_size, ranks)
        progress.console.quiet = not ranks.is_main
        with contextlib.ExitStack() as claimed:
            found = claim(cfg, output_dir, claimed) if ranks.is_main else None
            output_dir, stopped = ranks.from_main(found)
            try:
                return _run(cfg, output_dir, stopped, ranks, resolve_device(device_name))
            except RunInterrupted as stop:
                stop.run_folder = output_dir
                raise
    finally:
        distributed.stop()


def claim(cfg: DictConfig, output_dir: Path, held: contextlib.ExitStack) -> tuple[Path, dict | None]:
    """The run's folder, locked while `held` is, and with `train.resume` the stopped run's `last.pt` as read
    (checked before any data is)."""
    folder = claim_run_folder(output_dir, cfg.train.resume)
    held.enter_context(folder_lock(folder))
    return folder, stopped_run(folder, OmegaConf.to_container(cfg, resolve=True)) if cfg.train.resume else None


def _run(cfg: DictConfig, output_dir: Path, stopped: dict | None, ranks: Ranks, device: torch.device) -> float:
    """The run proper; `stopped` is the checkpoint a resumed run continues from."""
    torch.manual_seed(cfg.seed)
    family, tokenizer = load_task(cfg)
    check_select_by(family.objective, cfg.eval.select_by)
    print_config(cfg, saved_in_sweeps=True)  # after the data: a data error is the whole output, not after the config
    if not in_sweep():  # a sweep's job has named its folder with its config
        print_where("writing to", output_dir.resolve())
    algorithm = build_algorithm(cfg, tokenizer, device, n_train_classes=family.n_train_classes)
    family.check_algorithm(algorithm)
    family.prepare(algorithm)  # a resumed run's weights come from its checkpoint after this
    if ranks.world > 1:  # one starting point for all, and each process its own draws (dropout, fresh heads)
        ranks.copy_from_main(list(algorithm.trained_tensors().values()))
        torch.manual_seed(cfg.seed + ranks.rank)
    val_episodes = family.validation_episodes(tokenizer, cfg.eval.val_episodes, cfg.eval.seed)
    checkpoints = Checkpoints(output_dir / "checkpoints", OmegaConf.to_container(cfg, resolve=True), tokenizer.to_str())
    checkpoints.prepare(algorithm)
    settings = TrainSettings(cfg.train.outer_steps, cfg.train.meta_batch_size, cfg.train.grad_clip,
                             cfg.eval.val_interval, cfg.eval.select_by, cfg.train.average_from)  # fmt: skip
    optimizer, schedule = build_outer_optimizer(algorithm, instantiate(cfg.train.lr_schedule))
    rng = random.Random(cfg.seed)
    state = TrainState()
    if stopped is not None:  # refused before anything is written when the data changed since
        state = checkpoints.resume(stopped, algorithm, optimizer, schedule, rng)
        family.check_run_files(output_dir)  # its rows and splits too, not only the tokenizer they give
    if ranks.is_main:  # the tokenizer and the family's files, beside the checkpoints, for whoever uses the run later
        files = {"tokenizer.json": tokenizer.to_str(pretty=True), **family.run_files()}
        for name, text in files.items():
            write_text_atomically(output_dir / name, text)
    if not algorithm.meta_trains:  # the weights it tests, kept so that metarun-eval and load() serve it too
        checkpoints.save(algorithm, optimizer, schedule, rng, state, is_best=True)

    log_dir = output_dir / "tensorboard" if ranks.is_main else None
    with RunReporter(log_dir, cfg.train.outer_steps, state.step) as reporter:
        started = time.perf_counter()
        if algorithm.meta_trains:
            sampler = family.train_sampler()
            state = meta_train(
                meta_training_view(algorithm, sampler, val_episodes, device), sampler, val_episodes, settings,
                reporter, checkpoints, rng, device, optimizer, schedule, state,
            )  # fmt: skip
        train_seconds = time.perf_counter() - started
        best_step = checkpoints.load_best(algorithm)
        params = dict(algorithm.model.named_parameters())
        best_val = state.best or evaluate_scores(algorithm, params, val_episodes, device)[cfg.eval.select_by]
        started = time.perf_counter()
        test_set = family.test_set(tokenizer, cfg.eval.test_episodes, cfg.eval.seed + 1)
        with phase("meta-test") as advance:
            test = score_test(algorithm, params, test_set, device, cfg.eval.seed + 1, advance)
        timing = {  # a resumed run's meta-training time counts the time before its stop, when last.pt's clock says
            "meta_train_seconds": state.train_seconds if algorithm.meta_trains else train_seconds,
            "resumed": stopped is not None,
            "outer_step_median_seconds": statistics.median(state.step_seconds) if state.step_seconds else None,
            "test_seconds": time.perf_counter() - started,
            "processes": ranks.world,
        }
        metrics = {**test.metrics(), **validation_metrics(best_val, cfg.eval.select_by, best_step, cfg),
                   **identity(cfg, device)}  # fmt: skip
        if ranks.is_main:
            write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=1))
            write_text_atomically(output_dir / "timing.json", json.dumps(timing, indent=1))
            if not cfg.train.keep_last:  # finished: nothing left to resume
                checkpoints.last_path.unlink(missing_ok=True)
                checkpoints.clock_path.unlink(missing_ok=True)
        final = (TEST_ACC, val_key(cfg.eval.select_by), "test_balanced_acc", "test_macro_f1")
        reporter.log_hparams(hparams(cfg), {f"hparam/{k}": metrics[k] for k in final if metrics[k] is not None})

    rows = [("meta-val (best)", {cfg.eval.select_by: best_val}), *test.rows()]
    print_results(title(cfg), rows, (cfg.eval.select_by, *family.objective.shown))
    if metrics["best_at_last_step"]:
        progress.console.print(
            f"[yellow]The best validation came at the last outer step ({best_step} of {cfg.train.outer_steps}): the "
            "budget may be what limits this run; more outer steps (train.outer_steps) may still help."
        )
    folder = output_dir.resolve()
    uses = [] if in_sweep() else uses_of_run(folder, family.tests_on_corpus, family.objective.shared_head)
    print_where("run folder", folder, uses)
    return best_val.mean if METRICS[cfg.eval.select_by].higher_is_better else -best_val.mean


def uses_of_run(folder: Path, tests_on_corpus: bool, ratings: bool = False) -> list[tuple[str, str]]:
    """The commands that use a finished run's folder (other data only where its meta-test is drawn from data); a
    rating run's predict takes a user's rated items. A sweep's jobs print none: the sweep ends with its own."""
    run = shlex.quote(f"run={folder}")
    other = "data.ratings=..." if ratings else "data=... task.n_way=..."
    again = f"score it again; on other data: {other}" if tests_on_corpus else "score it again"
    if ratings:
        files, what = (
            "support=<a user's rated items> inputs=<candidate items> out=<ranked.csv>",
            "rank items for a user",
        )
    else:
        files, what = "support=<labelled file> inputs=<texts> out=<predictions.csv>", "label texts"
    return [(f"metarun-eval {run}", again), (f"metarun-predict {run} {files}", what),
            (f"tensorboard --logdir {shlex.quote(str(folder / 'tensorboard'))}", "its curves")]  # fmt: skip

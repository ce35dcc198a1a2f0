"""What a run shows: the config as a tree, a live progress bar, TensorBoard scalars and a results table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

from metarun.algorithms import TaskStats
from metarun.config import CONF_DIR
from metarun.evaluation import EvalResult

console = Console()


def _tree(node, tree: Tree) -> Tree:
    for key, value in node.items():
        if isinstance(value, dict):
            _tree(value, tree.add(f"[bold]{key}"))
        else:
            tree.add(f"{key}: [cyan]{value}")
    return tree


def print_config(cfg: DictConfig) -> None:
    """The config as a tree, headed by the options Hydra chose (the `tuning` file among them) when it composed."""
    title = "[bold]config"
    if HydraConfig.initialized():
        chosen = {k: v for k, v in HydraConfig.get().runtime.choices.items() if v and not k.startswith("hydra/")}
        if not (Path(CONF_DIR) / "tuning" / f"{chosen.get('tuning')}.yaml").is_file():
            chosen.pop("tuning", None)  # an optional default Hydra records even when no such file exists
        title += " [dim](" + ", ".join(f"{k}={v}" for k, v in chosen.items()) + ")"
    console.print(_tree(OmegaConf.to_container(cfg, resolve=True), Tree(title)))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class RunReporter:
    """TensorBoard events under `log_dir` and a rich progress bar over the outer steps."""

    def __init__(self, log_dir: Path, total_steps: int, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run hides what the stopped one logged after its checkpoint, and goes on from there
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)
        self.progress = Progress(
            TextColumn("[bold]meta-train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.task = self.progress.add_task("meta-train", total=total_steps, completed=start_step, status="")
        self.val_status = ""

    def __enter__(self) -> RunReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()  # a run that stops early still flushes its events
        self.writer.close()

    def log_train(self, step: int, stats: list[TaskStats], lr: float, grad_norm: float) -> None:
        scalars = {"train/outer_lr": lr, "train/grad_norm": grad_norm}
        if stats[0].loss_after is not None:
            scalars["train/loss_after"] = _mean([s.loss_after for s in stats])
            scalars["train/acc_after"] = _mean([s.acc_after for s in stats])
        if stats[0].loss_before is not None:
            scalars["train/loss_before"] = _mean([s.loss_before for s in stats])
            scalars["train/acc_before"] = _mean([s.acc_before for s in stats])
        for k in range(len(stats[0].inner_losses)):
            scalars[f"inner/loss_step_{k}"] = _mean([s.inner_losses[k] for s in stats])
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.progress.start()  # idempotent: shown from the first step on
        if "train/loss_after" in scalars:
            status = f"loss {scalars['train/loss_after']:.3f} acc {scalars['train/acc_after']:.2f}"
        else:
            status = f"grad norm {grad_norm:.3f}"
        status += self.val_status
        self.progress.update(self.task, completed=step, status=status)

    def log_validation(self, step: int, result: EvalResult) -> None:
        self.writer.add_scalar("val/acc", result.mean, step)
        self.writer.add_scalar("val/acc_ci95", result.ci95, step)
        self.val_status = f" | val {result}"

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        self.writer.add_hparams(hparams, metrics, run_name=".")


def print_results(title: str, rows: list[tuple[str, EvalResult | dict[str, EvalResult]]]) -> None:
    """One row per split or task: an EvalResult is its accuracy; a dict gives results by metric name (those of
    `evaluation.METRICS`), one column each for the metrics any row has (a row without one leaves its cell blank)."""
    headers = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1"}
    rows = [(name, result if isinstance(result, dict) else {"accuracy": result}) for name, result in rows]
    metrics = [m for m in headers if any(m in results for _, results in rows)]
    table = Table(title=title)
    table.add_column("split", no_wrap=True)
    for metric in metrics:
        table.add_column(f"{headers[metric]} % (95% CI)", justify="right")
    table.add_column("episodes", justify="right")
    for name, results in rows:
        cells = [str(results[m]) if m in results else "" for m in metrics]
        table.add_row(name, *cells, str(next(iter(results.values())).episodes))
    console.print(table)

"""A finished run as a model people use: load its checkpoint, adapt to labelled examples, predict.

    from metarun import load
    model = load("outputs/2026-11-29/14-02-11-3fa9c1")
    adapted = model.adapt(["refund my order", "where is my parcel", ...], ["refund", "tracking", ...])
    adapted.predict(["i want my money back"])          # ['refund']
    adapted.predict_proba(["i want my money back"])    # tensor [[0.93, 0.07]], columns in adapted.labels order

Adaptation is the algorithm's own test-time adaptation (MAML's inner steps, ProtoNet's prototypes, the
baselines' fresh head), on any number of labels with any number of examples each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from metarun.algorithms import Algorithm, Params
from metarun.abstain import abstained, choose_threshold
from metarun.algorithms.heads import head_of_size
from metarun.checkpoint import restore_weights
from metarun.checkpoint_file import load_checkpoint
from metarun.data.ratings import item_text, template_fields
from metarun.errors import UserError, brief
from metarun.evaluation import eval_mode
from metarun.parts import build_algorithm, resolve_device
from metarun.schema import PRECISIONS
from metarun.tokenizer import encode
from metarun.tokens import trim_padding

CHECKPOINTS = ("best", "last")


@dataclass
class TrainedModel:
    """A run's meta-trained weights inside its algorithm, with the run's tokenizer and config."""

    algorithm: Algorithm
    tokenizer: Tokenizer
    config: DictConfig  # the run's own
    step: int  # the outer step the weights are from
    device: torch.device

    def adapt(
        self, texts: list[str], labels: list[str], seed: int | None = None, unlabelled: list[str] | None = None
    ) -> AdaptedModel:
        """Adapt to labelled examples (labels as strings, in any number and balance); deterministic in `seed`
        (default: the run's seed) without touching the caller's random state. `unlabelled`: the texts to classify,
        which a transductive run (algo.transductive_steps) also adapts on, as it did at test time."""
        if self.algorithm.objective.shared_head:
            raise UserError("This run predicts ratings (task=users), not labels: adapt it with "
                            "adapt_to_ratings(item_texts, ratings).")  # fmt: skip
        texts = checked_texts(texts, "adapt")
        unlabelled = None if unlabelled is None else checked_texts(unlabelled, "adapt's unlabelled")
        if isinstance(labels, str) or len(texts) != len(labels) or not texts:
            raise UserError(f"adapt needs as many labels as texts, and at least one of each (got {len(texts)} texts "
                            f"and {len(labels)} labels).")  # fmt: skip
        names = sorted(set(map(str, labels)))
        if len(names) < 2:
            raise UserError(f"adapt needs examples of at least 2 labels to tell apart; got only {brief(names)}.")
        ids = {name: i for i, name in enumerate(names)}
        support_y = torch.tensor([ids[str(label)] for label in labels], device=self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed if seed is None else seed)
            with eval_mode(self.algorithm.model):
                extra = self.encode(unlabelled) if unlabelled and self.algorithm.transductive else None
                adapted = self.algorithm.adapt(self.head_of_size(len(names)), self.encode(texts), support_y, extra)
        return AdaptedModel(self, adapted, names)

    def adapt_to_ratings(self, texts: list[str], ratings: list[float], seed: int | None = None) -> AdaptedRater:
        """Adapt a rating run (task=users) to one user's rated items: their texts (`item_text` makes them from
        item fields as the run did) and ratings; deterministic in `seed` (default: the run's seed)."""
        if not self.algorithm.objective.shared_head:
            raise UserError("This run predicts labels, not ratings: adapt it with adapt(texts, labels).")
        texts = checked_texts(texts, "adapt_to_ratings")
        if isinstance(ratings, str) or len(texts) != len(ratings):
            raise UserError(f"adapt_to_ratings needs one rating per item text (got {len(texts)} texts and "
                            f"{len(ratings)} ratings).")  # fmt: skip
        targets = torch.tensor([float(r) for r in ratings], device=self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed if seed is None else seed)
            with eval_mode(self.algorithm.model):
                adapted = self.algorithm.adapt(self.head_of_size(1), self.encode(texts), targets)
        return AdaptedRater(AdaptedModel(self, adapted, ["rating"]))

    def item_text(self, fields: dict) -> str:
        """An item's text from its fields, by the run's template (data.template)."""
        template = self.config.data.template
        names = template_fields(template)
        return item_text(template, names, [fields.get(f) for f in names])

    def head_of_size(self, n_labels: int) -> Params:
        """The run's parameters with an `n_labels`-way head (`algorithms.heads.head_of_size`)."""
        return head_of_size(dict(self.algorithm.model.named_parameters()), n_labels, self.algorithm.learns_head)

    def encode(self, texts: list[str]) -> torch.Tensor:
        return trim_padding(encode(self.tokenizer, list(texts))).to(self.device)


@dataclass
class AdaptedModel:
    model: TrainedModel
    params: Params  # the adapted weights
    labels: list[str]  # the label of each column of predict_proba, sorted

    def logits(self, texts: list[str], batch_size: int = 256, progress=None) -> torch.Tensor:
        """[len(texts), len(labels)] logits, computed `batch_size` texts at a time."""
        texts, rows = checked_texts(texts, "predict"), []
        with eval_mode(self.model.algorithm.model), torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.model.encode(texts[start : start + batch_size])
                rows.append(self.model.algorithm.logits(self.params, batch).float().cpu())
                if progress is not None:
                    progress(min(start + batch_size, len(texts)))
        return torch.cat(rows) if rows else torch.empty(0, len(self.labels))

    def predict_proba(self, texts: list[str], batch_size: int = 256, progress=None) -> torch.Tensor:
        return self.logits(texts, batch_size, progress).softmax(-1)

    def predict(self, texts: list[str], batch_size: int = 256, oos_threshold: float | None = None,
                oos_label: str = "oos") -> list[str]:  # fmt: skip
        """The most probable label of each text; with `oos_threshold`, `oos_label` where its probability is lower
        (out of scope: none of these labels)."""
        return abstained(self.predict_proba(texts, batch_size), self.labels, oos_threshold or 0.0, oos_label)

    def choose_oos_threshold(self, texts: list[str], labels: list[str], oos_label: str = "oos") -> float:
        """The threshold for `predict` that scores best on validation `texts` whose `labels` are in-scope labels or
        `oos_label` (`metarun.abstain.choose_threshold`)."""
        return choose_threshold(self.predict_proba(texts), self.labels, [str(y) for y in labels], oos_label)


@dataclass
class AdaptedRater:
    """A rating run adapted to one user: predicted ratings of items, and the items they would rate highest."""

    adapted: AdaptedModel

    def predict(self, texts: list[str], batch_size: int = 256) -> list[float]:
        """The predicted rating of each item text."""
        return self.adapted.logits(texts, batch_size).squeeze(-1).tolist()

    def recommend(self, texts: list[str], k: int = 10, batch_size: int = 256) -> list[tuple[int, float]]:
        """The `k` items (index into `texts`, predicted rating) rated highest, best first."""
        ratings = self.predict(texts, batch_size)
        return sorted(enumerate(ratings), key=lambda pair: -pair[1])[:k]


def checked_texts(texts, call: str) -> list[str]:
    """`texts` as a list of non-empty strings, else a refusal that names the first bad one (a lone string would
    otherwise be read as its characters)."""
    if isinstance(texts, str):
        raise UserError(f"{call} takes a list of texts, not one string ({texts[:40]!r}); give [text] for one text.")
    texts = list(texts)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise UserError(f"{call}: text {bad[0]} is {texts[bad[0]]!r}, but every text must be a non-empty string "
                        f"({len(bad)} of {len(texts)} are not).")  # fmt: skip
    return texts


def checkpoint_path(run_folder: str | Path, checkpoint: str = "best") -> Path:
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"checkpoint={checkpoint!r} is not valid; use one of: {', '.join(CHECKPOINTS)}.")
    folder = Path(run_folder)
    path = folder / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        other = [c for c in CHECKPOINTS if (folder / "checkpoints" / f"{c}.pt").is_file()]
        hint = f"it has {other[0]}.pt: ask for checkpoint={other[0]}" if other else "it holds no checkpoint"
        raise UserError(
            f"{path} does not exist; {hint}. Give the folder of a metarun run (it holds checkpoints/ and metrics.json)."
        )
    return path


def load(
    run_folder: str | Path,
    checkpoint: str = "best",
    device: str = "auto",
    config: DictConfig | None = None,
    precision: str | None = None,
) -> TrainedModel:
    """A run's `best.pt` (or `last.pt`) with its own tokenizer, config and algorithm, on `device` (auto|cpu|cuda);
    `config` replaces the run's own settings (metarun-eval: how it adapts and where it runs), and `precision`
    (auto|fp32|bf16) the run's `device.precision`."""
    return model_from_checkpoint(load_checkpoint(checkpoint_path(run_folder, checkpoint)), device, config, precision)


def model_from_checkpoint(
    saved: dict, device: str = "auto", config: DictConfig | None = None, precision: str | None = None
) -> TrainedModel:
    """The run of an already-read checkpoint as a model (see `load`)."""
    # the model is built as the run built it (its n_way head); adapting resizes what a task rebuilds anyway
    config = OmegaConf.create(saved["config"]) if config is None else config
    if precision is not None:
        if precision not in PRECISIONS:
            raise UserError(f"precision={precision!r} is not valid; use one of: {', '.join(PRECISIONS)}.")
        config = OmegaConf.merge(config, {"device": {"precision": precision}})
    built_as = OmegaConf.merge(config, {"task": {"n_way": saved["config"]["task"]["n_way"]}})
    tokenizer = Tokenizer.from_str(saved["tokenizer"])
    target = resolve_device(device)
    sizes = get_class(config.algo._target_).saved_sizes(saved["extra"])  # its own tensors, as the run sized them
    with torch.random.fork_rng(devices=[]):  # construction draws weights that the checkpoint then replaces
        algorithm = build_algorithm(built_as, tokenizer, target, **sizes)
    restore_weights(algorithm, saved)
    return TrainedModel(algorithm, tokenizer, config, saved["step"], target)

"""Building a run's parts from its config: the device and precision it computes in, the task family, and the model
inside its algorithm. `metarun`, `metarun-eval`, `load()` and the baselines all build them here."""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from metarun.algorithms import Algorithm
from metarun.errors import UserError
from metarun.tasks import TaskFamily
from metarun.threads import choose_threads
from metarun.tokenizer import make_tokenizer, padding_id


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "device=cuda was asked for, but this machine has no CUDA device; use device=cpu or device=auto."
        )
    return torch.device(name)


def use_threads(device: DictConfig) -> None:
    """torch's CPU threads in this process: `device.threads`, else as `metarun.threads.choose_threads` decides."""
    torch.set_num_threads(choose_threads(device.threads).threads)


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


def build_task(cfg: DictConfig) -> TaskFamily:
    """The task family `cfg.task` names (its settings resolved: they may name the data's columns)."""
    return build(OmegaConf.create(OmegaConf.to_container(cfg.task, resolve=True)))


def load_task(cfg: DictConfig) -> tuple[TaskFamily, Tokenizer]:
    """The task family over the run's data, and the tokenizer fitted on what the family calls meta-train text."""
    family = build_task(cfg)
    return family, family.load(build(cfg.data), lambda texts: make_tokenizer(cfg.model, texts))


def build_algorithm(cfg: DictConfig, tokenizer: Tokenizer, device: torch.device, **sizes: int) -> Algorithm:
    """The model (initialised from the current torch seed) on `device`, inside the configured algorithm; `sizes`
    size the algorithm's own tensors (`n_train_classes`: a supervised baseline's pre-training head)."""
    architecture = {k: v for k, v in cfg.model.items() if k != "tokenizer"}  # the tokenizer is built: it sizes it
    model = build(
        OmegaConf.create(architecture), vocab_size=tokenizer.get_vocab_size(), pad_id=padding_id(tokenizer),
        n_classes=cfg.task.n_way,
    ).to(device)  # fmt: skip
    return build(
        cfg.algo, model=model, diagnostic_scores=cfg.train.diagnostic_scores, objective=build_task(cfg).objective,
        autocast_dtype=resolve_precision(cfg.device.precision, device, model.prefers_bf16), **sizes,
    )  # fmt: skip

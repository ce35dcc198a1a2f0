"""Tokenizers: a BPE subword tokenizer fitted on meta-train text only (so unseen classes' words still split
into known pieces), or a pretrained model's own (metarun.pretrained)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from metarun.schema import setting
from metarun.tokens import swap_padding

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1


def fit_tokenizer(texts: list[str], vocab_size: int, max_len: int) -> Tokenizer:
    """BPE over words marked with a leading '▁' (Metaspace) rather than WordPiece's '##' continuations:
    the trainer numbers '##' pieces in hash order, which makes its vocabulary differ between runs
    (huggingface/tokenizers#1794); without them training is deterministic."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.enable_truncation(max_len)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(PAD), pad_token=PAD, length=max_len)
    return tokenizer


@dataclass
class BPETokenizerConfig:
    _target_: str = "metarun.tokenizer.BPETokenizer"
    vocab_size: int = setting(2000, least=3)  # BPE vocabulary fitted on meta-train text
    max_len: int = "${..max_len}"  # type: ignore[assignment]


@dataclass(frozen=True)
class BPETokenizer:
    """The recipe of a metarun-built model's tokenizer (`model.tokenizer`): BPE fitted on the meta-train text."""

    vocab_size: int
    max_len: int

    def fit(self, train_texts: list[str]) -> Tokenizer:
        return fit_tokenizer(train_texts, self.vocab_size, self.max_len)


def make_tokenizer(model: DictConfig, train_texts: list[str]) -> Tokenizer:
    """The tokenizer `model.tokenizer` describes, fitted on `train_texts` when it learns from text."""
    return instantiate(model.tokenizer).fit(train_texts)


def padding_id(tokenizer: Tokenizer) -> int:
    return tokenizer.padding["pad_id"]


def encode(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts as one [rows, max_len] tensor of token ids, padded with `PAD_ID` whatever the tokenizer's padding
    id (the two ids swap places; metarun.pretrained swaps them back)."""
    tokens = torch.tensor([e.ids for e in tokenizer.encode_batch(texts)], dtype=torch.long)
    return swap_padding(tokens, padding_id(tokenizer))

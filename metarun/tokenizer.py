"""A WordPiece tokenizer fitted on meta-train text only, so unseen classes' words still split into known pieces."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1


def fit_tokenizer(texts: list[str], vocab_size: int, max_len: int) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.enable_truncation(max_len)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(PAD), pad_token=PAD, length=max_len)
    return tokenizer


def encode(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts as one [rows, max_len] tensor of token ids, padded with 0."""
    return torch.tensor([e.ids for e in tokenizer.encode_batch(texts)], dtype=torch.long)


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))

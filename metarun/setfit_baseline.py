"""SetFit (Tunstall et al., 2022; huggingface/setfit), the tool most practitioners pick for few-shot text
classification, as a baseline on the same episodes and fixed tasks as every other method: the run's own pretrained
encoder (`model=minilm` or `model=hf`) contrastively fine-tuned on pairs of the support set, then a logistic
regression head, with SetFit's default settings. Needs the `setfit` extra (`pip install -e '.[setfit]'`).

Episodes hold token ids; `EpisodeTexts` gives back the texts they were encoded from."""

from __future__ import annotations

import logging
import tempfile

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from metarun.errors import UserError
from metarun.features import text_keys
from metarun.hf_folder import model_folder
from metarun.tokenizer import encode


def _setfit():
    try:
        import setfit
    except ImportError:
        raise UserError(
            "The setfit baseline needs the setfit package; install it with pip install -e '.[setfit]'."
        ) from None
    return setfit


def encoder_folder(model: DictConfig) -> str:
    """The local folder of the run's pretrained encoder (what SetFit fine-tunes), refused for a metarun-built model."""
    if "name_or_path" not in model:
        raise UserError("The setfit baseline fine-tunes a pretrained encoder (model=minilm or model=hf); this config's "
                        "model is one metarun builds, which SetFit cannot load.")  # fmt: skip
    return str(model_folder(model.name_or_path, model.get("package")))  # SetFit reads either layout itself


class EpisodeTexts:
    """The text behind each token row of a corpus's texts (the first text, where truncation makes two the same)."""

    def __init__(self, tokenizer: Tokenizer, texts: list[str]) -> None:
        self.texts: dict[bytes, str] = {}
        for key, text in zip(text_keys(encode(tokenizer, texts)), texts):
            self.texts.setdefault(key, text)

    def __call__(self, tokens: torch.Tensor) -> list[str]:
        return [self.texts[key] for key in text_keys(tokens)]


def fit_predict(folder: str, texts: list[str], labels: list[str], scored: list[str], seed: int = 0,
                max_length: int | None = None) -> list[str]:  # fmt: skip
    """SetFit with its defaults (pairs drawn 20 times per example, one epoch, batch 16) trained on (`texts`,
    `labels`) from the encoder in `folder`; the predicted label of each `scored` text."""
    setfit = _setfit()
    from datasets import Dataset

    import transformers

    transformers.utils.logging.disable_progress_bar()  # its per-episode bars and logs would drown the progress
    for name in ("setfit", "sentence_transformers", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.manual_seed(seed)
    model = setfit.SetFitModel.from_pretrained(folder, device="cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as scratch:  # SetFit's trainer writes checkpoints and logs: not into the cwd
        arguments = setfit.TrainingArguments(output_dir=scratch, seed=seed, show_progress_bar=False, report_to="none",
                                             save_strategy="no", logging_strategy="no",
                                             **({"max_length": max_length} if max_length else {}))  # fmt: skip
        data = Dataset.from_dict({"text": list(texts), "label": list(labels)})
        trainer = setfit.Trainer(model=model, args=arguments, train_dataset=data)
        trainer.train()
    return [str(label) for label in model.predict(list(scored), as_numpy=True)]

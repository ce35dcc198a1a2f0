"""`metarun-export run=<folder> out=<dir>`: a run's meta-learned pretrained encoder as a Hugging Face folder, in
sentence-transformers' layout (the encoder's files at the top, `modules.json`, `1_Pooling/`), so that
`transformers.AutoModel.from_pretrained(out)` and `sentence_transformers.SentenceTransformer(out)` load it offline
and embed as the run does. The task heads are not in it: each task adapts its own."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

import metarun
from metarun.errors import UserError
from metarun.hf_folder import folder_layout
from metarun.lora import merged_state_dict
from metarun.pretrained import PretrainedClassifier
from metarun.progress import print_where
from metarun.trained import load

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json")  # fmt: skip
POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}


def export(cfg: DictConfig) -> Path:
    """Write the run's encoder into `cfg.out` (a new folder, written aside and renamed when complete)."""
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        raise UserError(f"out={cfg.out!r} already exists and is not an empty folder; metarun-export writes a new one. "
                        "Give out another path, or add overwrite=true.")  # fmt: skip
    trained = load(cfg.run, cfg.checkpoint, device="cpu")
    model = trained.algorithm.model
    if not isinstance(model, PretrainedClassifier):
        raise UserError(
            f"run={cfg.run!r} meta-trained model={trained.config.choices.model}, metarun's own Transformer, which no "
            "Hugging Face class loads; metarun-export writes pretrained encoders (model=hf, model=minilm). Use it "
            "from Python with metarun.load(run) instead."
        )
    aside = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(aside, ignore_errors=True)
    # the meta-learned weights as safetensors, LoRA adapters folded into the weights they adapt
    model.encoder.save_pretrained(aside, state_dict=merged_state_dict(model.encoder), safe_serialization=True)
    source = folder_layout(trained.config.model.name_or_path, trained.config.model.package).encoder
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, aside / name)
    _sentence_transformers_files(aside, model, trained.config.model.max_len)
    (aside / "metarun_export.json").write_text(json.dumps({
        "run": str(Path(cfg.run).resolve()), "checkpoint": cfg.checkpoint, "step": trained.step,
        "metarun_version": metarun.__version__, "pooling": model.pooling, "normalize": model.normalize,
        "not_exported": "the task head: every task adapts its own on its support set",
    }, indent=1))  # fmt: skip
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(aside, out)
    load_it = f"SentenceTransformer({str(out.resolve())!r}) or transformers.AutoModel.from_pretrained(...)"
    print_where("exported to", out.resolve(), [(load_it, "its encoder, offline; the task head is not in it")])
    return out


def _sentence_transformers_files(folder: Path, model: PretrainedClassifier, max_len: int) -> None:
    """modules.json, the pooling the run used and, where it normalised, a Normalize module."""
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling")] + [("2_Normalize", "Normalize")] * model.normalize
    modules = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
               for i, (path, kind) in enumerate(kinds)]  # fmt: skip
    (folder / "modules.json").write_text(json.dumps(modules, indent=1))
    for path, _ in kinds[1:]:
        (folder / path).mkdir()
    pooling = {"word_embedding_dimension": model.encoder.config.hidden_size, "pooling_mode_mean_sqrt_len_tokens": False,
               **{key: model.pooling == mode for mode, key in POOLING_KEYS.items()}}  # fmt: skip
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len, "do_lower_case": False}))

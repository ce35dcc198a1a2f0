"""A pretrained encoder's folder: where it is (a local folder, an installed model package, or the Hub), which
layout it has (transformers' own, or sentence-transformers' modules around one), its safetensors weights, and the
pooling and normalisation it prescribes.

Two layouts are read. transformers: config.json, model.safetensors and the tokenizer files at the top. sentence-
transformers: modules.json lists the modules, a Transformer (its files at the path it names: the top, as
all-MiniLM-L6-v2 has them, or a subfolder such as 0_Transformer), a Pooling (its config.json says the mode) and
optionally a Normalize.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from metarun.errors import UserError

WEIGHTS = "model.safetensors"
HUB_FILES = ["*.json", "*.txt", "*.model", WEIGHTS]  # config, tokenizer and weights; never *.bin (pickle)
POOLINGS = ("mean", "cls", "max")  # what `model.pooling` may name, as sentence-transformers names them
# before version 6, sentence-transformers switched a mode on as `pooling_mode_<old name>: true`; these are metarun's
OLD_POOLING_NAMES = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}


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


@dataclass(frozen=True)
class FolderLayout:
    """What a model folder holds where: the encoder's own files, and what its sentence-transformers modules say."""

    encoder: Path  # config.json, the weights and the tokenizer files
    pooling_config: Path | None  # a sentence-transformers Pooling module's config.json; None: the folder names none
    normalize: bool  # a Normalize module follows the pooling


MODULES = ("Transformer", "Pooling", "Normalize")  # the sentence-transformers modules metarun computes


@functools.cache
def folder_layout(name_or_path: str, package: str | None = None) -> FolderLayout:
    """The layout of the folder `model_folder` finds: sentence-transformers' where modules.json lists its modules,
    transformers' (everything at the top, mean pooling) otherwise."""
    folder = model_folder(name_or_path, package)
    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    paths = {m["type"].rsplit(".", 1)[-1]: folder / m.get("path", "") for m in modules}
    others = sorted(set(paths) - set(MODULES))
    if others:  # skipping one (a Dense projection, say) would give other embeddings than the model's own
        raise UserError(
            f"{modules_file} lists module(s) {', '.join(others)} that metarun does not run; it runs "
            f"{', '.join(MODULES)} only, so its embeddings would not be this model's. Give a folder without them."
        )
    pooling_config = paths.get("Pooling", folder / "1_Pooling") / "config.json"
    return FolderLayout(
        encoder=paths.get("Transformer", folder),
        pooling_config=pooling_config if pooling_config.is_file() else None,
        normalize="Normalize" in paths,
    )


def chosen_pooling(layout: FolderLayout, pooling: str | None) -> str:
    """`model.pooling` when given, else the mode the folder's Pooling config asks for, else mean."""
    if pooling is None and layout.pooling_config is not None:
        return prescribed_pooling(layout.pooling_config)
    pooling = pooling or "mean"
    if pooling not in POOLINGS:
        raise UserError(f"model.pooling={pooling!r} is not valid; use one of: {', '.join(POOLINGS)} (or null).")
    return pooling


def prescribed_pooling(config: Path) -> str:
    """The one mode a sentence-transformers Pooling config asks for, which must be one metarun pools by."""
    modes = asked_poolings(json.loads(config.read_text()))
    if len(modes) == 1 and modes[0] in POOLINGS:
        return modes[0]
    raise UserError(
        f"{config} asks for pooling {' + '.join(modes)}; metarun pools by exactly one of {', '.join(POOLINGS)}. "
        f"To use this encoder anyway, choose its pooling yourself: set model.pooling to one of those."
    )


def asked_poolings(settings: dict) -> list[str]:
    """The modes a Pooling config names, in sentence-transformers' names: `pooling_mode`, a name or a list (version
    6 on), else its older switches `pooling_mode_<name>`, where none switched on means mean."""
    if "pooling_mode" in settings:
        mode = settings["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    switched = [k.removeprefix("pooling_mode_") for k, on in settings.items() if k.startswith("pooling_mode_") and on]
    return [OLD_POOLING_NAMES.get(m, m) for m in switched] or ["mean"]


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


def missing_weights(folder: Path) -> UserError:
    """What to do when `folder` has no safetensors weights: convert pickle weights once, or find the real folder."""
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if not pickles:
        return UserError(f"{folder} has no {WEIGHTS}: give model.name_or_path a folder with config.json beside it.")
    return UserError(
        f"{folder} holds its weights only as {', '.join(pickles)}, a pickle, and metarun reads weights with "
        f"safetensors only, never pickle (unpickling a file can run any code in it). Convert it once, where you "
        f"trust the file: python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{folder}')"
        f".save_pretrained('{folder}')\" writes {WEIGHTS} beside it; then run again."
    )


def load_weights(folder: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / WEIGHTS
    if not path.is_file():
        raise missing_weights(folder)
    if sha256:
        verify_sha256(path, sha256)
    return load_file(path)

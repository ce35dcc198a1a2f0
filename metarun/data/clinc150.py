"""CLINC150's in-scope intents, from a local folder of JSONL splits or from the Hub."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from metarun.data.corpus import Corpus
from metarun.data.files import FileDataConfig, load_local
from metarun.errors import UserError
from metarun.schema import schema


@schema("data", "clinc150")
@dataclass
class Clinc150Config(FileDataConfig):
    _target_: str = "metarun.data.load_clinc150"
    path: Optional[str] = None


def load_clinc150(path: str | None = None, drop_empty: bool = False, max_chars: int = 5000) -> Corpus:
    """CLINC150 in-scope intents: from a local folder of JSONL splits, or with no `path` from the Hub (`clinc_oos`)."""
    if path is None:
        return _clinc150_from_hub(max_chars)
    if not Path(path).is_dir():
        raise UserError(
            f"data.path={path!r} is not a folder. Give the folder that holds CLINC150's *.jsonl files with "
            "data.path=<folder>, or point METARUN_DATA at the folder that holds clinc150/ (data.path defaults to "
            "${paths.data}/clinc150), or load the Hub's copy with data.path=null."
        )
    files = sorted(str(f) for f in Path(path).glob("*.jsonl"))
    return load_local(files, domain_column="domain", drop_empty=drop_empty, max_chars=max_chars)


def _clinc150_from_hub(max_chars: int) -> Corpus:
    import datasets

    try:
        splits = datasets.load_dataset("clinc_oos", "plus")
    except Exception as error:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise UserError(
            f"data.path=null asks for the Hub dataset 'clinc_oos', which could not be loaded "
            f"({type(error).__name__}). Give data.path=<folder with train/validation/test.jsonl>."
        ) from error
    names = splits["train"].features["intent"].names
    texts, labels = [], []
    for split in splits.values():
        for text, intent in zip(split["text"], split["intent"]):
            if names[intent] != "oos":
                texts.append(text[:max_chars])
                labels.append(names[intent])
    return Corpus(texts, labels, None, source="hub:clinc_oos/plus")

"""`metarun-predict`: adapt a run on the user's labelled examples, then label every input text into a file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from omegaconf import DictConfig

from metarun.abstain import abstained
from metarun.config import check_config
from metarun.data import load_local, load_texts
from metarun.data.files import readable_files
from metarun.errors import UserError, brief
from metarun.progress import console, phase
from metarun.parts import use_threads
from metarun.predict_ratings import ranked_candidates
from metarun.run_folder import write_text_atomically
from metarun.trained import load

OUTPUTS = (".jsonl", ".csv")
SHOW_PROGRESS_FROM = 2048  # inputs; fewer are labelled before a bar would be worth drawing


def predict(cfg: DictConfig) -> Path:
    """Write, for every input, its text, the predicted label and the probability of each label; returns `out`."""
    check_config(cfg)
    out = Path(cfg.out)
    if out.suffix.lower() not in OUTPUTS:
        raise UserError(f"out={cfg.out!r} is not valid: the predictions are written as JSONL or CSV, so give a path "
                        f"ending in {' or '.join(OUTPUTS)}.")  # fmt: skip
    check_out(out, cfg)
    for setting in ("support", "inputs"):  # a missing file is told before the model is loaded
        readable_files(cfg[setting], setting)
    use_threads(cfg.device)
    # auto keeps the run's own precision; fp32 or bf16 replaces it
    model = load(cfg.run, cfg.checkpoint, cfg.device.name,
                 precision=None if cfg.device.precision == "auto" else cfg.device.precision)  # fmt: skip
    if model.algorithm.objective.shared_head:  # a rating run: a user's rated items and candidates
        rows = ranked_candidates(cfg, model)
        write_rows(out, rows, rows, ["item", "predicted_rating", "rank"])
        console.print(f"wrote {len(rows)} predicted ratings to {out}, best first", highlight=False)
        return out
    columns = {"text_column": cfg.text_column, "label_column": cfg.label_column, "max_chars": cfg.max_chars}
    support = load_local(cfg.support, **columns, setting="support")
    texts = load_texts(cfg.inputs, cfg.text_column, cfg.max_chars)
    empty = [row for row, text in enumerate(texts, start=1) if not text.strip()]
    if empty:
        raise UserError(f"inputs={cfg.inputs!r} has {len(empty)} empty text(s) (rows {brief(empty)}, counting from "
                        "1); every input needs a text to label. Remove those rows.")  # fmt: skip
    adapted = model.adapt(support.texts, support.labels, seed=cfg.seed, unlabelled=texts)
    counts = {label: support.labels.count(label) for label in adapted.labels}
    console.print(f"adapted on {len(support)} examples of {len(counts)} labels: "
                  + ", ".join(f"{label} ({n})" for label, n in counts.items())
                  + (f", and transductively on the {len(texts)} inputs" if model.algorithm.transductive else ""),
                  highlight=False)  # fmt: skip
    threshold = oos_threshold(cfg, adapted, columns)
    with phase("predict", shown=len(texts) >= SHOW_PROGRESS_FROM) as advance:
        probabilities = adapted.predict_proba(texts, cfg.batch_size, lambda done: advance(done, len(texts)))
    labels = abstained(probabilities, adapted.labels, threshold, cfg.oos_label)
    rows = [{"text": text, "label": label, "probabilities": dict(zip(adapted.labels, p.tolist()))}
            for text, label, p in zip(texts, labels, probabilities)]  # fmt: skip
    columns = ["text", "label", *(f"p({label})" for label in adapted.labels)]  # a probability column per label
    flat = [{"text": r["text"], "label": r["label"], **{f"p({k})": p for k, p in r["probabilities"].items()}}
            for r in rows]  # fmt: skip
    write_rows(out, rows, flat, columns)
    console.print(f"wrote {len(rows)} predictions to {out}", highlight=False)
    return out


def oos_threshold(cfg: DictConfig, adapted, columns: dict) -> float:
    """The top probability below which an input is out of scope: `oos_threshold`, or the one that scores best on
    `oos_validation`; 0 (never) without either."""
    if cfg.oos_threshold is not None and cfg.oos_validation is not None:
        raise UserError("oos_threshold and oos_validation both say where an input is out of scope; give one of them "
                        "(a threshold, or a labelled file to choose it on).")  # fmt: skip
    if cfg.oos_validation is None:
        return cfg.oos_threshold or 0.0
    rows = load_local(cfg.oos_validation, **columns, setting="oos_validation")
    threshold = adapted.choose_oos_threshold(rows.texts, rows.labels, cfg.oos_label)
    console.print(f"out of scope ({cfg.oos_label}) below a top probability of {threshold:.4f}, chosen on the "
                  f"{len(rows)} rows of {cfg.oos_validation}", highlight=False)  # fmt: skip
    return threshold


def check_out(out: Path, cfg: DictConfig) -> None:
    """`out` is a new file in a folder that exists: never one of the inputs, and another file only with
    `overwrite=true`."""
    read = {Path(cfg.support).resolve(): "support", Path(cfg.inputs).resolve(): "inputs"}
    if out.resolve() in read:
        raise UserError(f"out={cfg.out!r} is the {read[out.resolve()]} file: the predictions would overwrite what they "
                        "are read from. Give out a path of its own.")  # fmt: skip
    if not out.resolve().parent.is_dir():
        raise UserError(f"out={cfg.out!r}: its folder {out.resolve().parent} does not exist; create it, or give out a "
                        "path in an existing folder.")  # fmt: skip
    if out.exists() and not cfg.overwrite:
        raise UserError(f"out={cfg.out!r} already exists; metarun-predict does not write over a file unless asked. "
                        "Give out another path, or add overwrite=true.")  # fmt: skip


def write_rows(out: Path, rows: list[dict], flat_rows: list[dict], columns: list[str]) -> None:
    """`rows` as JSONL, or `flat_rows` (one value per column) as CSV with `columns`, into `out`."""
    if out.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat_rows)
        text = buffer.getvalue()
    write_text_atomically(out, text)

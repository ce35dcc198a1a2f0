"""Finding and reading runs: a run folder's overrides, metrics.json, timing.json, error.txt, `.hydra/` files and
TensorBoard validation curve, as a `Run`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metarun.results import IDENTITY, SELECT_BY, val_key


@dataclass
class Run:
    """One run folder as its files say: its overrides (`.hydra/overrides.yaml`, else its metrics.json identity),
    its metrics.json and timing.json (None until it finished), and error.txt (a failed sweep job)."""

    folder: Path
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict | None = None
    timing: dict | None = None
    error: str | None = None
    unreadable: str | None = None  # why its metrics.json could not be read: listed, not tabled
    time_unknown: str | None = None  # why timing.json's time is not shown: `resumed`, `timing.json unreadable`
    _hydra: dict = field(default_factory=dict, repr=False)  # the .hydra/ files read so far
    _curve: list | None = field(default=None, repr=False)  # the validation curve once read

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def meta_train_seconds(self) -> float | None:
        """timing.json's meta-training time; None without one, or where it is not the run's (`time_unknown`)."""
        if self.timing is None or self.time_unknown is not None:
            return None
        return self.timing.get("meta_train_seconds")

    @property
    def val_score(self) -> tuple[str, float] | None:
        """(the validation score that picked best.pt, its best value), from metrics.json; None when absent."""
        select_by = (self.metrics or {}).get(SELECT_BY, "accuracy")
        value = (self.metrics or {}).get(val_key(select_by))
        return None if value is None else (select_by, value)

    def setting(self, key: str) -> str:
        """The value of an override key for this run: as typed when it was given, else the run's own (its
        metrics.json identity, the option Hydra chose for a config group, or `.hydra/config.yaml`), else `-`."""
        if key in self.overrides:
            return self.overrides[key]
        if self.metrics is not None and IDENTITY.get(key) in self.metrics:
            return str(self.metrics[IDENTITY[key]])
        choices = self._hydra_file("hydra.yaml").get("hydra", {}).get("runtime", {}).get("choices") or {}
        if key in choices:
            return "-" if choices[key] is None else str(choices[key])
        value = self._hydra_file("config.yaml")
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return "-" if value is None or isinstance(value, dict) else str(value)

    def _hydra_file(self, name: str) -> dict:
        """`.hydra/<name>` as read (once), {} when absent."""
        if name not in self._hydra:
            path = self.folder / ".hydra" / name
            self._hydra[name] = (_yaml(path) if path.is_file() else None) or {}
        return self._hydra[name]

    def val_curve(self) -> list[tuple[int, float]]:
        """(outer step, validation accuracy) from the run's TensorBoard events, read once by TensorBoard's own
        reader (which drops what a resumed run logged over); empty for runs that do not meta-train."""
        if self._curve is None:
            self._curve = _val_curve(self.folder / "tensorboard")
        return self._curve


def _val_curve(folder: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not folder.is_dir():
        return []
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    if "val/acc" not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars("val/acc")]


def _yaml(path: Path):
    import yaml  # PyYAML: OmegaConf's own dependency

    return yaml.safe_load(path.read_text())


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """`key=value` overrides as {key: value}; `+key`/`++key` count as `key`, a deletion `~key` as `key: ~`."""
    parsed = {}
    for line in lines:
        line = str(line)
        if line.startswith("~"):
            parsed[line[1:].split("=", 1)[0]] = "~"
            continue
        key, _, value = line.lstrip("+").partition("=")
        parsed[key] = value
    return parsed


def _json_object(path: Path) -> dict:
    """A JSON file's object; OSError or ValueError (its message saying why) when it cannot be read as one."""
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


def was_resumed(folder: Path) -> bool:
    """Continued with train.resume: each resume keeps its Hydra files in `.hydra/resume-ID/` (metarun.config)."""
    return any(path.is_dir() for path in (folder / ".hydra").glob("resume-*"))


def load_run(folder: Path) -> Run:
    run = Run(Path(folder))
    overrides = run.folder / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        run.overrides = parse_overrides(_yaml(overrides) or [])
    if (run.folder / "metrics.json").is_file():
        try:
            run.metrics = _json_object(run.folder / "metrics.json")
        except (OSError, ValueError) as error:
            lines = str(error).strip().splitlines()
            run.unreadable = f"metrics.json unreadable: {lines[0] if lines else type(error).__name__}"
        if run.metrics is not None and not overrides.is_file():  # started from Python: its main choices stand in
            run.overrides = {key: str(run.metrics[entry]) for key, entry in IDENTITY.items() if entry in run.metrics}
    if (run.folder / "timing.json").is_file():
        try:
            run.timing = _json_object(run.folder / "timing.json")
        except (OSError, ValueError):
            run.time_unknown = "timing.json unreadable"
    if run.timing is not None and _resumed_time_unknown(run):
        run.time_unknown = "resumed"
    if (run.folder / "error.txt").is_file():
        run.error = (run.folder / "error.txt").read_text().strip()
    return run


def _resumed_time_unknown(run: Run) -> bool:
    """A resumed run whose timing.json lacks the time before its stop: null there, or written by a metarun that
    counted only the time since the resume (no `resumed` entry)."""
    if "resumed" in run.timing:
        return run.timing["resumed"] and run.timing.get("meta_train_seconds") is None
    return was_resumed(run.folder)


def is_run_folder(folder: Path) -> bool:
    """A metarun run's folder: its metrics.json (not one of metarun-eval, which names the run it scored; an
    unreadable one counts, to be listed with why), a failed sweep job's error.txt, or the `.hydra/overrides.yaml` a
    run writes first."""
    metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            return "run" not in _json_object(metrics)
        except (OSError, ValueError):
            return True
    return (folder / "error.txt").is_file() or (folder / ".hydra" / "overrides.yaml").is_file()


class NoRuns(Exception):
    """A folder given to metarun-report that holds no runs."""


def find_runs(folders: Sequence[Path]) -> list[Run]:
    """Every run in `folders`: each is a run folder itself, or a folder (a sweep, `outputs/`) with run folders
    anywhere below it. Raises NoRuns naming the first folder that holds none."""
    runs: dict[Path, Run] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise NoRuns(f"{folder} is not a folder.")
        if is_run_folder(folder):
            found = [folder]
        else:
            marks = [*folder.rglob("metrics.json"), *folder.rglob("error.txt"), *folder.rglob(".hydra/overrides.yaml")]
            candidates = {m.parent.parent if m.parent.name == ".hydra" else m.parent for m in marks}
            found = sorted(c for c in candidates if is_run_folder(c))
        if not found:
            raise NoRuns(f"{folder} holds no metarun runs.")
        for path in found:
            runs.setdefault(path.resolve(), load_run(path))
    return list(runs.values())

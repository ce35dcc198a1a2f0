"""The config schema's pieces: `setting` (a field with its valid range or choices), `schema` (a dataclass registered
as `schema/<group>/<name>`, which a YAML of `conf/<group>` extends), and the schemas of the run itself (device,
training, evaluation, paths; the `metarun-eval` and `metarun-predict` commands).

Each part's schema sits beside its code (an algorithm's in its module, a task family's in `metarun/tasks/`);
`metarun.config.register_configs` imports the parts' packages, so a new part is found without a central list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.utils import instantiate
from omegaconf import MISSING, OmegaConf

from metarun.stats import METRICS

SCHEMAS: dict[str, dict[str, type]] = {}  # group -> name -> dataclass, filled by `schema`


def setting(default: Any = MISSING, *, least: float | None = None, above: float | None = None, below=None,
            choices: tuple | None = None, factory=None) -> Any:  # fmt: skip
    """A dataclass field with its valid range (`least` <= v, `above` < v, v < `below`) or `choices`."""
    given = {"least": least, "above": above, "below": below, "choices": choices}
    rules = {name: rule for name, rule in given.items() if rule is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


def schema(group: str, name: str):
    """Register a dataclass as the schema `schema/<group>/<name>` (what `- /schema/<group>/<name>@_here_` names)."""

    def register(cls: type) -> type:
        SCHEMAS.setdefault(group, {})[name] = cls
        return cls

    return register


def defaults(schema_class: type, given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `schema_class`'s defaults, for a part built from Python rather than from a YAML: the schema is the
    one source of defaults. A nested target (an outer optimizer) becomes what Hydra would make of it (a partial)."""
    names = {f.name for f in dataclasses.fields(schema_class) if not f.name.startswith("_")}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"{schema_class.__name__} has no setting {', '.join(unknown)}; its settings: {sorted(names)}")
    found = {}
    for f in dataclasses.fields(schema_class):
        if f.name in names and f.name not in given:
            value = f.default_factory() if f.default is dataclasses.MISSING else f.default
            found[f.name] = instantiate(OmegaConf.structured(value)) if dataclasses.is_dataclass(value) else value
    return {**found, **given}


# ---- the run: device, training, evaluation ----
PRECISIONS = ("auto", "fp32", "bf16")


@schema("device", "device")
@dataclass
class DeviceConfig:
    name: str = setting("auto", choices=("auto", "cpu", "cuda"))
    # auto: bf16 autocast for pretrained encoders on CUDA, else float32
    precision: str = setting("auto", choices=PRECISIONS)
    threads: Optional[int] = setting(None, least=1)  # torch's CPU threads; null: the idle share of usable CPUs


@dataclass
class PathsConfig:
    data: str = MISSING  # the folder that holds the data sets the presets name (conf/paths/default.yaml)
    arsc_targets: Optional[str] = None  # the folder of ARSC's 4 target domains' files (experiment=arsc)


@dataclass
class TrainConfig:
    outer_steps: int = setting(250, least=1)
    meta_batch_size: int = setting(4, least=1)  # episodes per outer step
    lr_schedule: Any = MISSING  # a partial target called with the outer optimizer: lr_schedule=cosine|constant
    grad_clip: Optional[float] = setting(1.0, above=0.0)  # max norm of the averaged (meta-)gradient; null: none
    # checkpoint averaging (SWA, Izmailov et al., 2018): from this outer step on, each validation scores, and best.pt
    # keeps, the mean of the model's trained weights at every validation since (Meta-SGD's learned rates are not
    # averaged); training itself goes on unchanged. null: off
    average_from: Optional[int] = setting(None, least=1)
    diagnostic_scores: bool = False  # forwards only for logging: the query before adaptation, Reptile's query after
    resume: Optional[str] = None  # a run folder: continue that run from its checkpoints/last.pt
    keep_last: bool = True  # false: a run that finishes removes last.pt (resume state); best.pt is what use needs


@dataclass
class EvalConfig:
    val_interval: int = setting(50, least=1)  # outer steps between validations (and checkpoints)
    val_episodes: int = setting(50, least=1)  # the same meta-validation episodes at every validation
    test_episodes: int = setting(600, least=1)  # meta-test episodes scored with the best checkpoint
    seed: int = 0  # validation episodes use this seed, test episodes seed + 1
    # the validation score that picks best.pt; on imbalanced dev files accuracy rewards leaning to the majority label
    select_by: str = setting("accuracy", choices=tuple(METRICS))


@dataclass
class Config:
    model: Any = MISSING
    algo: Any = MISSING
    task: Any = MISSING
    data: Any = MISSING
    device: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    choices: Dict[str, str] = setting(factory=dict)  # the option picked in each group, as Hydra recorded it
    seed: int = 0  # model initialisation and meta-training episodes
    debug: bool = False  # true: Python tracebacks instead of one-paragraph errors
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class EvaluateConfig(Config):
    """`metarun-eval`: a run's settings, with what the command line changes (data, task, eval, device)."""

    run: str = MISSING  # the run folder to score
    checkpoint: str = setting("best", choices=("best", "last"))
    # with fixed tasks, the file of each that is scored; dev chooses test-time settings (algo.eval_inner_steps)
    # without reading the test files
    scored: str = setting("test", choices=("test", "dev"))


@dataclass
class PredictConfig:
    """`metarun-predict`: adapt a run on labelled examples, then label every input text."""

    run: str = MISSING  # the run folder
    support: str = MISSING  # labelled examples (JSONL, CSV or Parquet): any labels, any number of each
    inputs: str = MISSING  # the texts to label (JSONL, CSV or Parquet)
    out: str = MISSING  # where the predictions go: .jsonl or .csv
    overwrite: bool = False  # true: write over an existing `out` (never over the support or inputs file)
    checkpoint: str = setting("best", choices=("best", "last"))
    text_column: str = "text"
    label_column: str = "label"
    max_chars: int = setting(5000, least=1)  # longer texts are cut when read
    batch_size: int = setting(256, least=1)  # texts scored at once
    device: DeviceConfig = field(default_factory=DeviceConfig)  # the device group: device=cpu|cuda|auto
    seed: Optional[int] = None  # adaptation's random draws (a fresh head); null: the run's seed
    # out of scope: oos_label where the top probability is below oos_threshold, or below the threshold chosen on
    # oos_validation (a labelled file whose out-of-scope rows are labelled oos_label); both null: never abstain
    oos_threshold: Optional[float] = setting(None, least=0.0, below=1.0)
    oos_validation: Optional[str] = None
    oos_label: str = "oos"
    # a rating run (task=users): support holds a new user's rated items (the run's item column, template fields and
    # rating_column), inputs the candidate items; out gets each candidate's predicted rating, best first
    rating_column: str = "rating"
    top_k: int = setting(10, least=1)  # the candidates shown as the user's top list


@dataclass
class ExportConfig:
    """`metarun-export`: a run's meta-learned pretrained encoder as a Hugging Face folder."""

    run: str = MISSING  # the run folder
    out: str = MISSING  # the folder to write (new, or empty; overwrite=true replaces one)
    checkpoint: str = setting("best", choices=("best", "last"))
    overwrite: bool = False


COMMANDS = {"schema": Config, "evaluate_schema": EvaluateConfig, "predict_schema": PredictConfig,
            "export_schema": ExportConfig}  # fmt: skip

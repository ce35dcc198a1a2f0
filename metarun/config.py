"""The config schema: every setting's type, default, range and choices, held once.

The dataclasses are registered with Hydra's ConfigStore; each YAML under `conf/` names its schema first in its
defaults list and sets only what differs, so Hydra checks types while composing and `check_ranges` checks the
ranges and choices written in each field's metadata before any data is read.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Collection, Sequence
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict

from metarun.errors import UserError, unknown_setting

# absolute, from any working directory: a wheel ships conf/ as metarun/conf; an editable install reads the repo's conf/
_PACKAGE = Path(__file__).resolve().parent
CONF_DIR = str(_PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf")


def setting(default: Any = MISSING, *, least: float | None = None, above: float | None = None, below=None,
            choices: tuple | None = None, factory=None) -> Any:  # fmt: skip
    """A dataclass field with its valid range (`least` <= v, `above` < v, v < `below`) or `choices`."""
    given = {"least": least, "above": above, "below": below, "choices": choices}
    rules = {name: rule for name, rule in given.items() if rule is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


SCOPES = ("all", "top", "head")  # every parameter | the top `top_layers` encoder layers and all above | the head
HEAD_INITS = ("learned", "zero", "random", "prototypes")  # prototypes: Proto-MAML (Triantafillou et al., 2020)
# the scores averaged over episodes or tasks, with their short names in metrics.json keys and TensorBoard tags
METRICS = {"accuracy": "acc", "balanced_accuracy": "balanced_acc", "macro_f1": "macro_f1"}


# ---- model ----
@dataclass
class BPETokenizerConfig:
    _target_: str = "metarun.tokenizer.BPETokenizer"
    vocab_size: int = setting(2000, least=3)  # BPE vocabulary fitted on meta-train text
    max_len: int = "${..max_len}"  # type: ignore[assignment]


@dataclass
class PretrainedTokenizerConfig:
    _target_: str = "metarun.pretrained.PretrainedTokenizer"
    name_or_path: str = "${..name_or_path}"
    package: Optional[str] = "${..package}"
    max_len: int = "${..max_len}"  # type: ignore[assignment]


@dataclass
class ModelConfig:
    """A model, and in `tokenizer` the recipe of its tokenizer (built first: the model is sized by it)."""

    _target_: str = MISSING
    tokenizer: Any = MISSING
    max_len: int = setting(32, least=2)  # tokens per text; longer texts are truncated


@dataclass
class TransformerConfig(ModelConfig):
    _target_: str = "metarun.model.TransformerClassifier"
    tokenizer: BPETokenizerConfig = field(default_factory=BPETokenizerConfig)
    d_model: int = setting(64, least=1)
    n_layers: int = setting(2, least=1)
    n_heads: int = setting(4, least=1)
    d_ff: int = setting(128, least=1)
    dropout: float = setting(0.0, least=0.0, below=1.0)


@dataclass
class PretrainedConfig(ModelConfig):
    _target_: str = "metarun.pretrained.PretrainedClassifier"
    tokenizer: PretrainedTokenizerConfig = field(default_factory=PretrainedTokenizerConfig)
    name_or_path: str = MISSING  # a local folder or a Hub name
    package: Optional[str] = None  # an installed Python package that ships the model folder, tried first
    sha256: Optional[str] = None  # of model.safetensors: checked before loading when given
    dropout: Optional[float] = setting(None, least=0.0, below=1.0)  # null keeps the model config's own
    pooling: Optional[str] = setting(None, choices=("mean", "cls"))  # null: as the folder prescribes (mean else)
    normalize: Optional[bool] = None  # null: as the folder prescribes (a Normalize module)


# ---- algorithm ----
@dataclass
class OptimizerConfig:
    """The outer optimizer as a partial target: metarun calls it with the tensors meta-training updates."""

    _target_: str = "torch.optim.Adam"  # algo/outer_optimizer=adam|sgd picks it
    _partial_: bool = True
    lr: float = setting(3.0e-3, above=0.0)


@dataclass
class AlgoConfig:
    _target_: str = MISSING
    outer_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    outer_scope: str = setting("all", choices=SCOPES)  # what meta-training updates
    top_layers: int = setting(2, least=0)  # k for the "top" scopes
    # the outer rate of the heads (a learned N-way head and its learned inner rates, finetune's pre-training head);
    # null: outer_optimizer.lr
    head_lr: Optional[float] = setting(None, above=0.0)


@dataclass
class AdaptingAlgoConfig(AlgoConfig):
    """Algorithms that adapt to a task with gradient steps on its support set."""

    inner_lr: float = setting(0.5, above=0.0)
    eval_inner_steps: int = setting(5, least=0)  # steps when adapting at validation and test
    inner_optimizer: str = setting("sgd", choices=("sgd", "adam"))
    inner_scope: str = setting("all", choices=SCOPES)  # what adapts per task; head is ANIL
    head_init: str = setting("zero", choices=HEAD_INITS)
    prototype_scale: float = setting(10.0, above=0.0)  # head_init=prototypes: the head is scale * unit class means


@dataclass
class InnerLoopAlgoConfig(AdaptingAlgoConfig):
    """Algorithms that also adapt during meta-training (MAML, Reptile)."""

    # steps on the support set during meta-training; the start is meta-learned for exactly this many, so with a large
    # inner_lr (steps that overshoot) give eval_inner_steps the same number
    inner_steps: int = setting(3, least=0)
    # auto: batched over tasks with torch.func.vmap on CUDA, task by task on CPU
    batch_tasks: Any = setting("auto", choices=("auto", True, False))


@dataclass
class MAMLConfig(InnerLoopAlgoConfig):
    _target_: str = "metarun.algorithms.MAML"
    first_order: bool = False
    # store (fastest) | recompute (inner-step graphs rebuilt in the backward pass: far less memory)
    memory: str = setting("store", choices=("store", "recompute"))


@dataclass
class MAMLppConfig(MAMLConfig):
    _target_: str = "metarun.algorithms.MAMLpp"
    msl_steps: int = setting(100, least=0)  # outer steps over which the multi-step loss moves to the last step
    first_order_steps: int = setting(50, least=0)  # outer steps of first order before second order (DA)


@dataclass
class ReptileConfig(InnerLoopAlgoConfig):
    _target_: str = "metarun.algorithms.Reptile"
    # epsilon, the interpolation theta + eps * (theta' - theta): plain SGD at lr eps on theta - theta'
    outer_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("torch.optim.SGD", lr=0.1))


@dataclass
class SupervisedConfig(AdaptingAlgoConfig):
    _target_: str = "metarun.algorithms.SupervisedBaseline"
    pretrain: bool = True  # supervised training over all meta-train classes first (finetune) or not (scratch)
    eval_inner_steps: int = setting(100, least=0)  # Adam steps on a fresh head (Chen et al., 2019, "Baseline")
    inner_lr: float = setting(0.01, above=0.0)
    inner_optimizer: str = setting("adam", choices=("sgd", "adam"))
    inner_scope: str = setting("head", choices=SCOPES)
    head_init: str = setting("random", choices=HEAD_INITS)
    outer_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1.0e-3))


@dataclass
class ProtoNetConfig(AlgoConfig):
    _target_: str = "metarun.algorithms.ProtoNet"
    meta_train: bool = True
    distance: str = setting("euclidean", choices=("euclidean", "cosine"))
    prototype_scale: float = setting(10.0, above=0.0)  # cosine only: the softmax temperature
    # at validation and test: soft k-means steps that refine the prototypes with the query texts (transductive)
    transductive_steps: int = setting(0, least=0)


# ---- task ----
@dataclass
class SplitConfig:
    val: float = setting(0.15, least=0.0)  # a fraction of the classes (or domains), or a count; 0: dev files
    test: float = setting(0.25, least=0.0)  # 0: fixed evaluation tasks only (task.eval_tasks)
    seed: int = 0


@dataclass
class EvalTaskConfig:
    name: str = MISSING
    train: str = MISSING  # the labelled file adapted on
    test: str = MISSING  # the file scored
    dev: Optional[str] = None  # a labelled file scored at each validation instead of meta-val episodes


@dataclass
class TaskConfig:
    split_by: str = setting("class", choices=("class", "domain"))
    split: SplitConfig = field(default_factory=SplitConfig)
    n_way: int = setting(5, least=2)
    k_shot: int = setting(1, least=1)
    n_query: int = setting(15, least=1)  # query examples per class
    # query examples per class in meta-training episodes (fewer is faster); null: n_query
    meta_train_query: Optional[int] = setting(None, least=1)
    # classes per meta-training episode for algorithms that build their head from each support set (protonet: more
    # ways in training than in testing help, Snell et al., 2017); null: n_way
    meta_train_way: Optional[int] = setting(None, least=2)
    drop_small_classes: bool = False  # true: leave out classes with fewer than k_shot + n_query examples
    # permuted: labels drawn anew for every episode | fixed: a class's label id is its label name's place among the
    # sorted names, in every episode (a label set that every domain shares, e.g. sentiment across products)
    labels: str = setting("permuted", choices=("permuted", "fixed"))
    # balanced: task.n_query queries of each class | natural: n_way * n_query queries drawn from the episode's classes
    # at their own frequencies in its domain (test files keep their label prior; so meta-training can learn it)
    query: str = setting("balanced", choices=("balanced", "natural"))
    eval_tasks: List[EvalTaskConfig] = setting(factory=list)  # fixed evaluation tasks instead of sampled episodes
    # fixed tasks adapt on this many examples per label, drawn once from each train file (seeded by split.seed and
    # the task's name: every run and algorithm gets the same support); null: the whole train file
    eval_shots: Optional[int] = setting(None, least=1)


# ---- data ----
@dataclass
class DataConfig:
    _target_: str = MISSING


@dataclass
class FileDataConfig(DataConfig):
    drop_empty: bool = False  # true: skip rows with empty text instead of stopping
    max_chars: int = setting(5000, least=1)  # longer texts are cut when read


@dataclass
class LocalDataConfig(FileDataConfig):
    _target_: str = "metarun.data.load_local"
    files: Any = MISSING  # a path, a folder or a glob pattern, or a list of them (their files are pooled)
    text_column: str = "text"
    label_column: str = "label"
    domain_column: Optional[str] = None  # needed for task=domain_adapt


@dataclass
class Clinc150Config(FileDataConfig):
    _target_: str = "metarun.data.load_clinc150"
    path: Optional[str] = None


@dataclass
class SyntheticDataConfig(DataConfig):
    _target_: str = "metarun.data.generate_synthetic"
    seed: int = 0
    n_domains: int = setting(10, least=1)
    classes_per_domain: int = setting(12, least=1)
    examples_per_class: int = setting(40, least=1)
    # own: each domain has its own classes | shared: one label set, domain-specific cue words
    label_sets: str = setting("own", choices=("own", "shared"))
    cue_vocab: int = setting(200, least=1)  # made-up cue words shared by all classes
    cues_per_class: int = setting(3, least=1)
    cues_per_text: int = setting(3, least=1)
    filler_range: List[int] = setting(factory=lambda: [10, 16])  # English filler words per text
    filler_vocab: int = setting(60, least=1)


@dataclass
class PathsConfig:
    data: str = MISSING  # the folder that holds the data sets the presets name (conf/paths/default.yaml)
    arsc_targets: Optional[str] = None  # the folder of ARSC's 4 target domains' files (experiment=arsc)


# ---- device, training, evaluation ----
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class DeviceConfig:
    name: str = setting("auto", choices=("auto", "cpu", "cuda"))
    # auto: bf16 autocast for pretrained encoders on CUDA, else float32
    precision: str = setting("auto", choices=PRECISIONS)
    threads: Optional[int] = setting(None, least=1)  # torch's CPU threads in this process; null: one per core


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
    checkpoint: str = setting("best", choices=("best", "last"))
    text_column: str = "text"
    label_column: str = "label"
    max_chars: int = setting(5000, least=1)  # longer texts are cut when read
    batch_size: int = setting(256, least=1)  # texts scored at once
    device: DeviceConfig = field(default_factory=DeviceConfig)  # the device group: device=cpu|cuda|auto
    seed: Optional[int] = None  # adaptation's random draws (a fresh head); null: the run's seed


SCHEMAS = {
    "model": {"transformer": TransformerConfig, "pretrained": PretrainedConfig},
    "algo": {
        "maml": MAMLConfig,
        "mamlpp": MAMLppConfig,
        "reptile": ReptileConfig,
        "supervised": SupervisedConfig,
        "protonet": ProtoNetConfig,
    },
    "task": {"task": TaskConfig},
    "data": {"local": LocalDataConfig, "clinc150": Clinc150Config, "synthetic": SyntheticDataConfig},
    "device": {"device": DeviceConfig},
}


def register_configs() -> None:
    """The schemas as `schema/<group>/<name>`, which each YAML of `conf/<group>` extends (`@_here_`)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="predict_schema", node=PredictConfig)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


_RUN_ID = uuid.uuid4().hex[:6]  # one per process: runs started in the same second get different folders


def register_resolvers() -> None:
    """`${run_id:}` for unique run folders; `${run_dir:resume,default}` puts a resumed run in its own folder, and
    `${hydra_subdir:resume}` its config files in `.hydra/resume-ID`, beside the original ones; `${config_groups:}`
    lists conf/'s groups and options for `--help`."""
    OmegaConf.register_new_resolver("run_id", lambda: _RUN_ID, replace=True)
    OmegaConf.register_new_resolver("config_groups", _config_groups, replace=True)
    OmegaConf.register_new_resolver("abspath", lambda path: str(Path(path).expanduser().resolve()), replace=True)
    OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)
    OmegaConf.register_new_resolver("hydra_subdir", _hydra_subdir, replace=True)


def config_groups() -> list[str]:
    """The config groups of conf/ (`algo`, `algo/outer_optimizer`, ...): Hydra's own list adds the schema groups."""
    folders = {path.parent for path in Path(CONF_DIR).rglob("*.yaml")} - {Path(CONF_DIR)}
    return sorted(str(folder.relative_to(CONF_DIR)) for folder in folders)


def group_options(group: str) -> list[str]:
    """The options of one config group: its YAML files' names."""
    return sorted(path.stem for path in (Path(CONF_DIR) / group).glob("*.yaml"))


def _config_groups(*only: str) -> str:
    """Each group of conf/ (or those named) with its options, one line each, for `--help`."""
    return "\n".join(f"  {group}: {', '.join(group_options(group))}" for group in config_groups()
                     if not only or group in only)  # fmt: skip


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def _run_dir(resume: str | None, default: str) -> str:
    if _rank() > 0:  # under torchrun rank 0 alone writes the run's folder; Hydra's logs of the others go aside
        return str(Path(tempfile.gettempdir()) / f"metarun-rank{_rank()}-{_RUN_ID}")
    return resume or default


def _hydra_subdir(resume: str | None) -> str | None:
    if _rank() > 0:
        return None
    return f".hydra/resume-{_RUN_ID}" if resume else ".hydra"


def compose(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """metarun's config (`config`, `evaluate` or `predict`) as its command line composes it, for Python callers:
    Hydra's record of the composition is set as inside the app, so `${hydra:...}` values resolve."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_configs()
    register_resolvers()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # as the app's task config: Hydra's own settings live in HydraConfig only
    return cfg


def _problem(key: str, value: Any, rules: dict) -> str | None:
    """What is wrong with one value under its rules, None when it is valid."""
    if value is None:
        return None
    if "choices" in rules and value not in rules["choices"]:
        shown = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in rules["choices"])
        return f"{key}={value!r} is not valid; use one of: {shown}."
    bounds = {"least": (lambda v, b: v >= b, "at least"), "above": (lambda v, b: v > b, "greater than"),
              "below": (lambda v, b: v < b, "less than")}  # fmt: skip
    broken = [f"{words} {rules[name]}" for name, (holds, words) in bounds.items()
              if name in rules and not holds(value, rules[name])]  # fmt: skip
    if broken:
        return f"{key}={value!r} is not valid; it must be {' and '.join(broken)}."
    return None


def _problems(node: DictConfig, prefix: str, extra: Collection[str] = ()) -> list[str]:
    schema = OmegaConf.get_type(node)
    rules = {f.name: f.metadata for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    found = []
    for key in node:
        name = f"{prefix}{key}"
        if rules and key not in rules and name not in extra:
            found.append(unknown_setting(name, list(rules)))
            continue
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            found += _problems(value, f"{name}.", extra)
        elif isinstance(value, ListConfig):
            found += [p for i, item in enumerate(value) if isinstance(item, DictConfig)
                      for p in _problems(item, f"{name}[{i}].")]  # fmt: skip
        elif rules.get(key):
            found.append(_problem(name, value, rules[key]))
    return [p for p in found if p]


def check_config(cfg: DictConfig, extra: Collection[str] = ()) -> None:
    """Every setting against its schema, before any work: values still missing, unknown keys (but the dotted names
    in `extra`), then ranges and choices."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(
            f"These settings need a value: {', '.join(missing)}; give them on the command line, e.g. {missing[0]}=..."
        )
    problems = _problems(cfg, "", extra) + (_split_problems(cfg.task) if "task" in cfg else [])
    if problems:
        raise UserError(" ".join(problems))


def every_task_has_dev_file(task: DictConfig) -> bool:
    """Whether there are fixed evaluation tasks and each names a dev file (which then validates, or is scored)."""
    return bool(task.eval_tasks) and all(t.dev for t in task.eval_tasks)


def _split_problems(task: DictConfig) -> list[str]:
    """An empty meta-test or meta-val split needs fixed tasks that stand in for it."""
    problems = []
    if task.split.test == 0 and not task.eval_tasks:
        problems.append(
            "task.split.test=0 leaves no meta-test classes or domains; it is for fixed evaluation tasks "
            "(task.eval_tasks), which are then the test. Give task.split.test a fraction or a count, or eval tasks."
        )
    if task.split.val == 0 and not every_task_has_dev_file(task):
        problems.append(
            "task.split.val=0 leaves nothing to validate on; it is for fixed evaluation tasks that each name a dev "
            "file (task.eval_tasks=[{name: ..., train: ..., test: ..., dev: ...}]). Give task.split.val a fraction "
            "or a count, or a dev file to every eval task."
        )
    return problems

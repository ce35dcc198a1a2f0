import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the suite may wait on the network
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# one thread per process: the suite runs on two workers (pytest -n 2), and tests start metarun in subprocesses;
# threads beyond the cores slow tiny models many times over
os.environ.setdefault("OMP_NUM_THREADS", "1")
# kept feature tables go to a folder of this test process's own, not ~/.cache: no run reads another session's table
os.environ.setdefault("METARUN_CACHE", tempfile.mkdtemp(prefix="metarun-test-cache-"))
atexit.register(shutil.rmtree, os.environ["METARUN_CACHE"], True)

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402

from metarun.episodes import Episode  # noqa: E402
from metarun.model import TransformerClassifier  # noqa: E402

# the real data sets: $METARUN_DATA as the presets read it, else ../shared/data beside the checkout
DATA = Path(os.environ.get("METARUN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CLINC150 = DATA / "clinc150"
os.environ.setdefault("METARUN_DATA", str(DATA))  # conf/paths: runs started in any folder find it
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
BIN = Path(sys.executable).parent  # the installed commands: metarun, metarun-eval, metarun-report, torchrun, ...
# The one fast-run setting of the suite. conf/budget/smoke.yaml: a run in seconds (2 outer steps of 1 task,
# validation at step 2 on 1 episode, 3 test episodes, 3 queries per class); 12 examples per synthetic class keep
# the data small too. A test adds only what its assertions need beyond it.
SMOKE_DATA = ["data=synthetic", "data.examples_per_class=12"]
SMOKE = ["budget=smoke", *SMOKE_DATA, "device=cpu"]


def smoke(*overrides: str) -> list[str]:
    """SMOKE with `overrides` on top; overrides that pick their own data (`data=...`) replace SMOKE's data."""
    own_data = any(o.startswith("data=") for o in overrides)
    return [*(o for o in SMOKE if not (own_data and o in SMOKE_DATA)), *overrides]


def compose_config(*overrides):
    """metarun's config as the command line composes it, on the smoke budget, with `overrides` on top."""
    from metarun.config import compose

    return compose("config", smoke(*overrides))


def command(name: str, *args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """An installed command (`BIN / name`, e.g. metarun or torchrun) run as a user types it, output captured; it
    inherits this environment, which the top of this file makes offline and one thread per process."""
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """`run_cli(main, *args) -> (exit code, stdout, stderr)`: a command's entry point (`metarun.cli.main`,
    `eval_main`, `predict_main`, `metarun.report.main`) run in this process as `metarun *args` would run it, for
    checks of what a command tells and its exit code; `command` runs the installed one where a real process matters
    (signals, sweeps, torchrun, the working directory, Hydra's one run id per process). Hydra clears its global state
    itself after each run; the logging handlers it sets up and torch's thread count are put back here."""
    import logging

    def run(main, *args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["metarun", *args])
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        saved = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers
                 if isinstance(lg, logging.Logger)]  # fmt: skip
        threads = torch.get_num_threads()
        capsys.readouterr()  # what the test printed before is not the command's
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        finally:
            for logger, handlers, level, propagate, disabled in saved:  # Hydra's handlers hold capsys's streams
                for handler in set(logger.handlers) - set(handlers):
                    handler.close()
                logger.handlers, logger.propagate, logger.disabled = handlers, propagate, disabled
                logger.setLevel(level)
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def load_script(name: str):
    """scripts/<name>.py as a module, imported as when the script runs (its sibling modules import)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


INNER_LR, INNER_STEPS = 0.3, 2


def naive_maml_loss(model, params, episode, create_graph=True, adapted=None):
    """MAML's meta-loss written out by hand: two unrolled SGD steps on the `adapted` names (default all),
    then the query loss."""
    fast = dict(params)
    adapted = list(params) if adapted is None else adapted
    for _ in range(INNER_STEPS):
        support_loss = F.cross_entropy(functional_call(model, fast, (episode.support_x,)), episode.support_y)
        grads = torch.autograd.grad(support_loss, [fast[n] for n in adapted], create_graph=create_graph)
        fast = {**fast, **{name: fast[name] - INNER_LR * g for name, g in zip(adapted, grads)}}
    return F.cross_entropy(functional_call(model, fast, (episode.query_x,)), episode.query_y), fast


def tiny_model(dtype=torch.float64, n_classes: int = 3, seed: int = 0) -> TransformerClassifier:
    torch.manual_seed(seed)
    model = TransformerClassifier(vocab_size=30, n_classes=n_classes, d_model=8, n_layers=2, n_heads=2, d_ff=16,
                                  max_len=10, dropout=0.0)  # fmt: skip
    return model.to(dtype)


def random_episode(n_way: int = 3, k_shot: int = 2, n_query: int = 3, seed: int = 0) -> Episode:
    """Random token ids with ragged lengths (the tail padded), labels 0..N-1."""
    g = torch.Generator().manual_seed(seed)

    def tokens(rows: int) -> torch.Tensor:
        x = torch.randint(2, 30, (rows, 10), generator=g)
        lengths = torch.randint(3, 11, (rows,), generator=g)
        x[torch.arange(10)[None, :] >= lengths[:, None]] = 0
        return x

    labels = torch.arange(n_way)
    return Episode(tokens(n_way * k_shot), labels.repeat_interleave(k_shot), tokens(n_way * n_query),
                   labels.repeat_interleave(n_query), torch.arange(n_way))  # fmt: skip


@pytest.fixture
def model64() -> TransformerClassifier:
    return tiny_model()


@pytest.fixture
def episode() -> Episode:
    return random_episode()


def save_tiny_bert(folder: Path, words: tuple[str, ...] = (), width: int = 16, ff: int = 32) -> Path:
    """A randomly initialised 2-layer BERT (seed 0) and a WordPiece tokenizer of `words`, letters and continuing
    letters, saved into `folder` as transformers saves them (safetensors, tokenizer.json)."""
    import string

    import transformers

    letters = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *(f"##{c}" for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=width, num_hidden_layers=2, num_attention_heads=2, intermediate_size=ff,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder

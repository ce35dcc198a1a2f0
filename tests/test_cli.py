"""The `metarun` command end to end, as a user runs it: outputs, sweeps, determinism and bad input."""

import json
import random
import re
from pathlib import Path

import pytest
import torch

from conftest import CLINC150, SMOKE, command, smoke
from metarun import __version__, cli
from metarun.config import compose
from metarun.parts import load_task


def metarun(*args, cwd=None):
    return command("metarun", *args, cwd=cwd)


def run_ok(run_dir, *args):
    """The installed `metarun` on the smoke budget (conftest.SMOKE) with `args` on top, in `run_dir`."""
    result = metarun(*smoke(f"hydra.run.dir={run_dir}", *args))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_finds_its_configs_from_any_working_directory(tmp_path):
    result = metarun("--info", "searchpath", cwd=tmp_path)
    assert result.returncode == 0
    conf = Path(__file__).resolve().parents[1] / "conf"
    assert f"file://{conf}" in result.stdout


def smoke_budget_values() -> list[str]:
    """conf/budget/smoke.yaml's values as key=value overrides: the smoke budget without picking its option."""
    from omegaconf import OmegaConf

    from metarun.config import CONF_DIR

    def flat(node: dict, prefix: str = ""):
        for key, value in node.items():
            yield from flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={value}"]

    return list(flat(OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "budget" / "smoke.yaml"))))


def test_synthetic_run_writes_everything_a_user_looks_for(tmp_path):
    # SMOKE with the budget's values instead of budget=smoke, which would head the options in the tree's title;
    # 6 test episodes: a count of its own, told apart from SMOKE's
    smoke_unpicked = [*(o for o in SMOKE if o != "budget=smoke"), *smoke_budget_values()]
    result = metarun(*smoke_unpicked, "eval.test_episodes=6", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    for path in (".hydra/config.yaml", "tokenizer.json", "checkpoints/best.pt", "checkpoints/last.pt",
                 "metrics.json", "splits.json"):  # fmt: skip
        assert (run / path).is_file(), path
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_episodes"] == 6 and metrics["algo"] == "maml"
    assert "meta-test" in result.stdout and "accuracy % (95% CI)" in result.stdout
    # the tree is headed by the options Hydra chose
    chosen = "config (model=tiny, algo=maml, task=fewshot_cls, data=synthetic, device=cpu, algo/outer_optimizer=adam,"
    assert chosen in " ".join(result.stdout.split())
    best = torch.load(run / "checkpoints/best.pt")
    assert best["step"] == metrics["best_step"] and best["step"] in (2, 3)
    # the meta-test's progress in a log (stdout is not a terminal here): a line at every tenth, 6 episodes
    progress = [line for line in result.stdout.splitlines() if line.startswith("meta-test ") and "|" in line]
    assert [line.split(" | ")[0] for line in progress][-1] == "meta-test 6/6 (100%)" and len(progress) == 6
    assert all(re.search(r" \| [0-9.]+/s \| elapsed \S+ \| eta ", line) for line in progress)  # rate and ETA
    ending = result.stdout.rsplit("meta-test", 1)[1]  # after the results: where the run is and what uses it
    folder = run.resolve()
    assert "# score it again; on other data: data=" in " ".join(ending.split())  # its meta-test is drawn from data
    for line in (f"writing to: {folder}", f"run folder: {folder}", f"metarun-eval run={folder}",
                 f"metarun-predict run={folder}", f"tensorboard --logdir {folder / 'tensorboard'}"):  # fmt: skip
        assert line in (result.stdout if line.startswith("writing") else ending), line


def test_tensorboard_gets_the_promised_scalars_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_ok(tmp_path / "run", "train.outer_steps=3", "algo.inner_steps=2", "algo.head_init=learned",
           "train.diagnostic_scores=true")  # fmt: skip
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss_before", "train/acc_before", "train/loss_after", "train/acc_after", "train/outer_lr",
                "train/grad_norm", "inner/loss_step_0", "inner/loss_step_1", "val/acc"):  # fmt: skip
        assert tag in tags, tag
    assert len(events.Scalars("train/loss_after")) == 3
    hparams = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload().summary_metadata
    assert any("_hparams_" in tag for tag in hparams)


def test_hparams_tell_the_runs_of_a_sweep_apart():
    from metarun.results import hparams

    flat = hparams(compose("config", [*SMOKE, "algo=reptile", "model=small"]))
    assert flat["choice.algo"] == "reptile" and flat["choice.model"] == "small"  # not only settings that coincide
    assert flat["algo.outer_optimizer.lr"] == 0.1 and flat["model.tokenizer.vocab_size"] == 4000  # nested, dotted
    assert flat["train.lr_schedule.T_max"] == 2 and flat["seed"] == 0
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


@pytest.mark.skipif(not CLINC150.is_dir(), reason="no clinc150/ in $METARUN_DATA or ../shared/data")
def test_clinc150_run(tmp_path):
    run_ok(tmp_path / "run", "data=clinc150", "task.split.test=50", "task.split.val=15")
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert len(splits["test"]) == 50 and len(splits["train"]) == 85


def test_multirun_gives_each_run_its_own_folder(tmp_path):
    result = metarun("-m", *smoke("seed=0,1", f"hydra.sweep.dir={tmp_path}"))
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p.parent.name for p in tmp_path.glob("*/metrics.json"))
    assert len(folders) == 2 and folders[0].startswith("0_") and folders[1].startswith("1_")
    assert "seed=0" in folders[0] and "seed=1" in folders[1]
    output = " ".join(result.stdout.split())  # each job names its saved config instead of printing the whole tree
    assert output.count("in full: ") == 2 and f"{tmp_path / folders[1] / '.hydra' / 'config.yaml'}" in output
    assert "grad_clip" not in output
    ending = result.stdout.rsplit("meta-test", 1)[1]  # after the last job: where the sweep is and what reads it
    assert f"sweep folder: {tmp_path.resolve()}" in ending and f"metarun-report {tmp_path.resolve()}" in ending
    assert "metarun-eval" not in result.stdout  # a sweep's job names its folder in one line


def test_same_seed_same_config_gives_identical_metrics(tmp_path):
    run_ok(tmp_path / "a")
    run_ok(tmp_path / "b")
    assert (tmp_path / "a/metrics.json").read_text() == (tmp_path / "b/metrics.json").read_text()


@pytest.fixture
def bad_input(run_cli, tmp_path):
    """`bad_input(*args, code=2)`: metarun's entry point run in this test's process on the smoke budget with `args`,
    in tmp_path/run; it must exit with `code` and no traceback. Returns its stderr as one line."""

    def told(*args, code=2):
        exit_code, stdout, stderr = run_cli(cli.main, *smoke(f"hydra.run.dir={tmp_path / 'run'}", *args))
        assert exit_code == code, (stdout[-2000:], stderr[-2000:])
        assert "Traceback" not in stderr
        return " ".join(stderr.split())

    return told


def test_unknown_option_names_the_valid_ones(bad_input):
    message = bad_input("algo=nope")
    assert "algo=nope is not an option of algo. The options are: anil, finetune," in message and "reptile" in message
    assert "did you mean algo=maml?" in bad_input("algo=mamll")


def test_a_group_set_to_null_is_told_how_to_leave_it_out(bad_input):
    message = bad_input("experiment=null", "train.grad_clip=null")  # Hydra: a ValueError with a traceback
    assert "experiment=null: a config group takes the name of one of its options" in message
    assert "~experiment" in message
    assert "grad_clip" not in message  # a setting, which null suits


def test_a_tuning_asked_for_by_name_must_exist(bad_input):
    message = bad_input("tuning=maml_minilm_arc")  # `optional` in the defaults list: Hydra would skip it
    assert "tuning=maml_minilm_arc is not an option of tuning; did you mean tuning=maml_minilm_arsc?" in message


def test_n_way_larger_than_the_split(bad_input):
    message = bad_input("task.n_way=40")
    assert "task.n_way=40 is larger than the" in message


def test_k_shot_plus_queries_larger_than_a_class(bad_input):
    message = bad_input("task.k_shot=30", "task.n_query=15")
    assert "task.k_shot + task.n_query = 30 + 15 = 45" in message and "task.drop_small_classes=true" in message


@pytest.mark.parametrize("problem", ["missing", "empty", "columns", "blank text"])
def test_bad_data_files(tmp_path, bad_input, problem):
    path = tmp_path / "data.jsonl"
    rows = [{"text": f"example {i}", "label": f"c{i % 10}"} for i in range(200)]
    if problem == "columns":
        rows = [{"utterance": r["text"], "label": r["label"]} for r in rows]
    if problem == "blank text":
        rows[7]["text"] = ""
    if problem != "missing":
        path.write_text("" if problem == "empty" else "".join(json.dumps(r) + "\n" for r in rows))
    message = bad_input("data=local", f"data.files={path}")
    expected = {"missing": "not found", "empty": "are empty", "columns": "lacks the column(s) 'text'",
                "blank text": "have empty text (rows 7)"}[problem]  # fmt: skip
    assert expected in message and str(path) in message or "rows 7" in message


def test_local_data_without_files_says_which_setting(bad_input):
    assert "data.files" in bad_input("data=local")


def test_a_data_error_is_not_buried_under_the_config(tmp_path, run_cli):
    code, stdout, stderr = run_cli(cli.main, *smoke(f"hydra.run.dir={tmp_path / 'run'}", "data=local",
                                                    f"data.files={tmp_path / 'no.jsonl'}"))  # fmt: skip
    assert code == 2 and "not found" in stderr and "outer_steps" not in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(bad_input):
    assert "device=cuda was asked for, but this machine has no CUDA device" in bad_input("device=cuda")


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, bad_input):
    message = bad_input("algo.outer_optimizer.lr=1e8", "train.grad_clip=null", "eval.val_interval=1",
                        "train.outer_steps=20", "lr_schedule=constant")  # fmt: skip
    assert "diverged at outer step" in message
    step = int(message.split("diverged at outer step ")[1].split()[0])
    last = torch.load(tmp_path / "run/checkpoints/last.pt")
    assert last["step"] == step - 1
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_protonet_meta_trains_on_wider_episodes_than_it_tests_and_maml_refuses(tmp_path, bad_input):
    family, _ = load_task(compose("config", ["algo=protonet", "task.meta_train_way=8"]))
    samplers = family.samplers
    widths = {name: len(s.sample(random.Random(0)).support_y.unique()) for name, s in samplers.items()}
    assert widths == {"train": 8, "val": 5, "test": 5}
    run_ok(tmp_path / "proto", "algo=protonet", "task.meta_train_way=8")
    metrics = json.loads((tmp_path / "proto" / "metrics.json").read_text())
    assert metrics["n_way"] == 5 and 0.0 <= metrics["test_acc"] <= 1.0
    message = bad_input("algo=maml", "task.meta_train_way=8")
    assert "task.meta_train_way=8" in message and "task.n_way=5" in message and "MAML" in message


@pytest.mark.parametrize(
    ("typed", "parsed"),
    [
        ("run=outputs/multirun/x/0_algo=maml,seed=1", "outputs/multirun/x/0_algo=maml,seed=1"),  # a sweep job's folder
        ("run=my runs/a", "my runs/a"),
        ("run=outputs/2026-11-30/10-00-00-ab12cd", "outputs/2026-11-30/10-00-00-ab12cd"),
        ("run=o\\,p", "o,p"),  # written for the grammar already: an escaped comma
        ("run='q,a'", "q,a"),
    ],
)
def test_a_path_setting_is_read_as_the_path_typed(typed, parsed):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from metarun.cli import quote_paths

    [override] = OverridesParser.create().parse_overrides(quote_paths([typed], ("run",)))
    assert override.value() == parsed


def test_a_sweep_over_runs_is_left_to_the_grammar():
    from metarun.cli import quote_paths

    assert quote_paths(["-m", "run=a,b", "x=1"], ("run",)) == ["-m", "run=a,b", "x=1"]
    assert quote_paths(["task.n_way=3", "algo.x=[1,2]"], ("run",)) == ["task.n_way=3", "algo.x=[1,2]"]


@pytest.mark.parametrize("main", [cli.main, cli.eval_main, cli.predict_main])
def test_version_is_metarun_s_own(run_cli, main):
    assert run_cli(main, "--version")[:2] == (0, f"metarun {__version__}\n")


def test_help_lists_the_config_groups_a_user_picks(run_cli):
    shown = metarun("--help")  # through the installed entry point
    assert shown.returncode == 0 and shown.stdout.startswith("metarun: meta-train")
    assert "  tuning: anil_minilm," in shown.stdout and "maml_minilm_arsc" in shown.stdout
    assert "schema/" not in shown.stdout  # the structured configs are not options to pick
    _, evaluate, _ = run_cli(cli.eval_main, "--help")
    assert (
        "  data: clinc150, local, ratings, synthetic" in evaluate and "  algo:" not in evaluate
    )  # what eval may change

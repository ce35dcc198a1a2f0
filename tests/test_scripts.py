import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA, compose_config, load_script

from metarun.run import run


def test_results_table_has_one_row_per_swept_setting(tmp_path, capsys):
    for algo in ("maml", "scratch"):  # run from Python: no .hydra/, so metrics.json says what each run was
        run(compose_config(f"algo={algo}"), tmp_path / algo)
    capsys.readouterr()  # what the runs printed
    load_script("results_table").main([str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| algo | test accuracy % ± 95% CI over test episodes | seeds | test episodes |")
    assert lines[2].startswith("| maml | ") and lines[3].startswith("| scratch | ") and len(lines) == 5
    assert all("| 1 | 3 |" in line for line in lines[2:4])  # one seed, 3 test episodes each


def test_benchmark_runs_a_matrix_writes_the_table_and_resumes(tmp_path):
    benchmark = load_script("benchmark")
    readme = tmp_path / "results.md"
    readme.write_text("# title\n\n<!-- benchmark:begin -->\nold table\n<!-- benchmark:end -->\n\nafter\n")
    argv = ["--data", "synthetic", "--families", "fewshot_cls", "--shots", "1", "--algos", "protonet,scratch",
            "--test-episodes", "4", "--out", str(tmp_path / "bench"), "--doc", str(readme),
            "train.outer_steps=2", "eval.val_interval=2", "eval.val_episodes=2", "model=tiny"]  # fmt: skip
    table = benchmark.main(argv)
    assert [(r["family"], r["shots"], r["algo"]) for r in table] == [
        ("fewshot_cls", 1, "protonet"),
        ("fewshot_cls", 1, "scratch"),
    ]
    saved = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert saved["rows"] == table and saved["header"]["test_episodes"] == 4
    text = readme.read_text()
    assert "old table" not in text and "| fewshot_cls | 1 | protonet |" in text and text.endswith("after\n")

    runs = tmp_path / "bench" / "runs"
    kept = (runs / "fewshot_cls_1shot_scratch_seed0" / "metrics.json").stat().st_mtime_ns
    (runs / "fewshot_cls_1shot_protonet_seed0" / "metrics.json").unlink()  # a half-finished matrix
    again = benchmark.main(argv)
    assert (runs / "fewshot_cls_1shot_scratch_seed0" / "metrics.json").stat().st_mtime_ns == kept
    assert (runs / "fewshot_cls_1shot_protonet_seed0" / "metrics.json").is_file()
    accuracy = [(r["algo"], r["test_acc"], r["test_ci95"]) for r in table]
    assert [(r["algo"], r["test_acc"], r["test_ci95"]) for r in again] == accuracy  # the resumed cell is exact

    partial = [a if a != "protonet,scratch" else "protonet,scratch,maml" for a in argv] + ["--finished-only"]
    assert [r["algo"] for r in benchmark.main(partial)] == ["protonet", "scratch"]  # nothing new ran
    assert not (runs / "fewshot_cls_1shot_maml_seed0").exists()
    assert "Not run yet: fewshot_cls_1shot_maml_seed0." in readme.read_text()


def test_a_stopped_benchmark_stops_its_running_cell_too(tmp_path):
    marker = tmp_path / "child.pid"
    child = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = (
        "import sys; sys.path.insert(0, 'scripts'); import benchmark; "
        f"print(benchmark.run_to_the_end([sys.executable, '-c', {child!r}], None))"
    )
    script = subprocess.Popen([sys.executable, "-c", parent], cwd=Path(__file__).parents[1], stdout=subprocess.PIPE)
    for _ in range(200):  # until the cell's command has started
        if marker.is_file() and marker.read_text():
            break
        time.sleep(0.05)
    script.send_signal(signal.SIGTERM)
    out, _ = script.communicate(timeout=20)
    assert out.decode().strip() == str(-signal.SIGTERM)  # the cell's command ended by the SIGTERM sent on to it
    with pytest.raises(ProcessLookupError):  # the cell's command is gone, not orphaned
        os.kill(int(marker.read_text()), 0)


def test_benchmark_aggregates_seeds_with_a_t_interval(tmp_path):
    from metarun.report import Run

    benchmark = load_script("benchmark")
    cell = lambda seed: benchmark.Cell("fewshot_cls", 1, "maml", seed)  # noqa: E731
    result = lambda seed, acc, ci: (cell(seed), Run(tmp_path / str(seed), metrics={  # noqa: E731
        "test_acc": acc, "test_ci95": ci, "test_episodes": 600, "val_acc": 0.5, "k_shot": 1, "seed": seed,
    }, timing={"meta_train_seconds": 60.0}))  # fmt: skip
    (row,) = [benchmark.as_json(r) for r in benchmark.aggregate([result(0, 0.6, 0.02), result(1, 0.8, 0.04)])]
    assert (row["family"], row["shots"], row["algo"], row["seeds"]) == ("fewshot_cls", 1, "maml", 2)
    assert abs(row["test_acc"] - 0.7) < 1e-12 and row["test_ci95_over"] == "seeds"
    assert abs(row["test_ci95"] - 12.706204736 * 0.1) < 1e-9  # t(1) * sd / sqrt(2); not the episodes' intervals


def test_benchmark_picks_the_per_shot_preset_and_budget():
    benchmark = load_script("benchmark")
    args = benchmark.parse_args(["--outer-steps", "7"])
    five, one = (benchmark.Cell("fewshot_cls", k, "maml", 0) for k in (5, 1))
    assert benchmark.cell_preset(five, "clinc150") == "clinc150_intents_5shot"
    assert benchmark.cell_preset(one, "clinc150") == "clinc150_intents"  # the family preset is 1-shot
    assert benchmark.cell_preset(one, "synthetic") is None
    overrides = benchmark.cell_overrides(five, args)
    assert overrides[0] == "experiment=clinc150_intents_5shot" and "train.outer_steps=7" in overrides


ARSC = DATA / "arsc_source"


@pytest.mark.skipif(not ARSC.is_dir(), reason="no arsc_source/ in $METARUN_DATA or ../shared/data")
def test_benchmark_of_an_experiment_tables_its_runs_and_the_baselines_over_fixed_tasks(tmp_path):
    benchmark = load_script("benchmark")
    doc = tmp_path / "results.md"
    doc.write_text("<!-- benchmark-arsc_dev:begin -->\n<!-- benchmark-arsc_dev:end -->\n")
    slice_ = f"data.files=[{ARSC}/baby.t2.train.jsonl,{ARSC}/beauty.t5.train.jsonl]"
    argv = ["--experiment", "arsc_dev", "--algos", "protonet", "--variant", 'top1=algo=maml algo.outer_scope=top '
            'algo.top_layers=1', "--baselines", "majority,tfidf_lr,features_lr", "--out", str(tmp_path / "bench"),
            "--doc", str(doc), "budget=smoke", "model=tiny", "device=cpu", slice_]  # fmt: skip
    rows = benchmark.main(argv)
    assert [r["method"] for r in rows] == ["protonet", "top1", *(f"baseline: {m}" for m in ("majority", "tfidf_lr",
                                                                                          "features_lr"))]  # fmt: skip
    runs = tmp_path / "bench" / "runs"
    for row, folder in zip(rows, ("arsc_dev_protonet_seed0", "arsc_dev_top1_seed0")):
        metrics = json.loads((runs / folder / "metrics.json").read_text())
        assert (row["acc"], row["balanced_acc"], row["tasks"]) == (
            metrics["test_acc"],
            metrics["test_balanced_acc"],
            12,
        )
    assert "algo.outer_scope=top" in (runs / "arsc_dev_top1_seed0" / ".hydra" / "overrides.yaml").read_text()
    majority = json.loads((tmp_path / "bench" / "baselines.json").read_text())["majority"]
    by_hand = []
    for name in majority["per_task_acc"]:
        labels = [json.loads(line)["label"] for line in (ARSC / f"{name}.test.jsonl").read_text().splitlines()]
        by_hand.append(max(labels.count("1"), labels.count("-1")) / len(labels))
    assert majority["test_acc"] == pytest.approx(sum(by_hand) / len(by_hand)) and majority["test_balanced_acc"] == 0.5
    assert "| baseline: tfidf_lr |" in doc.read_text() and "Command: `python scripts/benchmark.py" in doc.read_text()

import json

from conftest import compose_config, load_script

from metarun.run import run


def test_results_table_has_one_row_per_run(tmp_path):
    for algo in ("maml", "scratch"):
        run(compose_config(f"algo={algo}"), tmp_path / algo)
    rows = load_script("results_table").rows(tmp_path)
    assert len(rows) == 2
    assert rows[0].startswith("| maml | tiny | fewshot_cls 5-way 1-shot | synthetic | ")
    assert rows[1].startswith("| scratch |") and "| 3 |" in rows[1]


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


def test_benchmark_averages_over_seeds():
    benchmark = load_script("benchmark")
    cell = lambda seed: benchmark.Cell("fewshot_cls", 1, "maml", seed)  # noqa: E731
    metrics = lambda acc, ci: {"test_acc": acc, "test_ci95": ci, "test_episodes": 600, "meta_train_seconds": 60.0}  # noqa: E731
    (row,) = benchmark.aggregate([(cell(0), metrics(0.6, 0.02)), (cell(1), metrics(0.8, 0.04))])
    assert row["seeds"] == 2 and abs(row["test_acc"] - 0.7) < 1e-12 and abs(row["test_ci95"] - 0.03) < 1e-12


def test_benchmark_picks_the_per_shot_preset_and_budget():
    benchmark = load_script("benchmark")
    args = benchmark.parse_args(["--outer-steps", "7"])
    five, one = (benchmark.Cell("fewshot_cls", k, "maml", 0) for k in (5, 1))
    assert benchmark.cell_preset(five, "clinc150") == "clinc150_intents_5shot"
    assert benchmark.cell_preset(one, "clinc150") == "clinc150_intents"  # the family preset is 1-shot
    assert benchmark.cell_preset(one, "synthetic") is None
    overrides = benchmark.cell_overrides(five, args)
    assert overrides[0] == "experiment=clinc150_intents_5shot" and "train.outer_steps=7" in overrides

"""`metarun-report` on a small real sweep (table values, plots, failed jobs, bad input), the interval maths against
known values, and the progress lines a run prints into a log."""

import io
import json
import os
import math
import re

import pytest

from conftest import command
from metarun import report, stats

T_975 = {1: 12.706, 2: 4.303, 4: 2.776, 10: 2.228, 30: 2.042, 60: 2.000, 120: 1.980}  # printed tables, 3 decimals


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two seeds of 1 and 2 shots, and a 50-shot job that fails (40 examples per class): a piped `metarun -m`."""
    folder = tmp_path_factory.mktemp("sweep")
    done = command("metarun", "-m", "budget=smoke", "data=synthetic", "device=cpu", "seed=0,1",
                   "task.k_shot=1,2,50", f"hydra.sweep.dir={folder}")  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # the sweep ends non-zero: two jobs failed
    assert "2 job(s) of the sweep failed" in done.stderr
    return folder, done.stdout


def test_report_tables_the_seed_means_and_lists_the_failed_jobs(sweep, tmp_path, capsys):
    folder, _ = sweep
    report.main([str(folder), "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "across seeds (Student-t, per-seed means)" in text  # the header says what the interval is
    assert "| task.k_shot | test accuracy %" in text  # the swept setting; seed aggregated away
    for shots in (1, 2):
        runs = [json.loads(p.read_text()) for p in folder.glob(f"*,task.k_shot={shots}/metrics.json")]
        assert sorted(m["seed"] for m in runs) == [0, 1]
        a, b = (m["test_acc"] for m in runs)
        half = 12.706204736 * abs(a - b) / 2  # t(1) * sd / sqrt(2), with sd = |a - b| / sqrt(2)
        assert f"| {shots} | {100 * (a + b) / 2:.1f} ± {100 * half:.1f} | 2 | 3 |" in text
    assert "| 50 |" not in text
    assert "Failed runs (2, not in the table)" in text
    assert "`2_budget=smoke,data=synthetic,device=cpu,seed=0,task.k_shot=50`: task.k_shot + task.n_query" in text
    assert "| 1 | " in capsys.readouterr().out  # the table is printed too

    import matplotlib.image

    for name in report.PLOTS:
        png = tmp_path / "report" / name
        assert png.stat().st_size > 5000, name
        pixels = matplotlib.image.imread(png)
        assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::7]}) > 20, name  # not one colour
        assert f"]({name})" in text


def test_report_default_folder_and_bad_input(sweep, tmp_path, run_cli):
    folder, _ = sweep
    job = folder / "0_budget=smoke,data=synthetic,device=cpu,seed=0,task.k_shot=1"
    code, _, stderr = run_cli(report.main, str(job))
    assert code == 0, stderr
    assert (job / "report" / "report.md").is_file()

    empty = tmp_path / "empty"
    (empty / "something").mkdir(parents=True)
    code, stdout, stderr = run_cli(report.main, str(empty))
    assert code == 2 and not stdout
    message = " ".join(stderr.split())
    assert f"{empty} holds no metarun runs" in message and "expects a sweep folder" in message
    assert "Traceback" not in stderr


def test_progress_in_a_log_is_whole_lines(sweep):
    """stdout piped: each meta-train line carries step/total, elapsed, eta and the loss, uncut."""
    _, stdout = sweep
    lines = [line for line in stdout.splitlines() if line.startswith("meta-train")]
    full = r"meta-train step 2/2 \(100%\) \| elapsed \d+:\d\d:\d\d \| eta \d+:\d\d:\d\d \| loss \d+\.\d{3} acc \d\.\d\d"
    assert len([line for line in lines if re.fullmatch(full + r" \| val \d+\.\d\d", line)]) == 4  # the 4 good jobs
    assert len(lines) == 8 and not any("…" in line for line in lines)  # steps 1 and 2 of each


def test_log_lines_come_every_few_steps_and_at_each_validation(monkeypatch):
    from rich.console import Console

    from metarun import progress

    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=30))  # not a terminal, and narrow
    clock = iter(float(t) for t in [0, 1000, *range(1001, 1200)])  # setup took 1000 s, then 1 s per step
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = progress.LogLines(100, lines=10)
    for step in range(1, 101):
        lines.step(step, f"loss {1 / step:.3f} acc 0.50")
        if step % 25 == 0:
            lines.validation(step, "61.00 ± 2.00")
    lines.close()
    shown = out.getvalue().splitlines()
    steps = [int(re.match(r"meta-train step (\d+)/100 ", line).group(1)) for line in shown]
    assert steps == [1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 100]
    assert shown[3].endswith("| loss 0.040 acc 0.50 | val 61.00 ± 2.00") and " eta " in shown[3]
    assert "| eta - |" in shown[0] and "| eta 0:01:15 |" in shown[3]  # 75 steps left at the steps' own pace


def test_swept_settings_are_the_overrides_that_differ(tmp_path):
    """A run that left a swept group at its default shows the option Hydra chose; where each run wrote (hydra.*) and
    its seed are no settings; a run without metrics.json is no row."""

    def fake_run(name, overrides, algo, seed, acc=None):
        hydra = tmp_path / name / ".hydra"
        hydra.mkdir(parents=True)
        (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (hydra / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n      algo: {algo}\n      budget: null\n")
        if acc is not None:
            metrics = {"test_acc": acc, "test_ci95": 0.05, "test_episodes": 10, "val_acc": 0.5, "seed": seed}
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))

    fake_run("a", ["hydra.run.dir=a", "seed=0", "train.outer_steps=5"], "maml", 0, 0.6)
    fake_run("b", ["hydra.run.dir=b", "seed=1", "train.outer_steps=5"], "maml", 1, 0.8)
    fake_run("c", ["hydra.run.dir=c", "algo=reptile", "+budget=smoke", "train.outer_steps=5"], "reptile", 0, 0.4)
    fake_run("d", ["hydra.run.dir=d", "algo=protonet"], "protonet", 0)  # unfinished, before its first checkpoint
    fake_run("e", ["hydra.run.dir=e", "algo=protonet"], "protonet", 0)  # unfinished, resumable
    (tmp_path / "e" / "checkpoints").mkdir()
    (tmp_path / "e" / "checkpoints" / "last.pt").write_bytes(b"")
    fake_run("f", ["hydra.run.dir=f", "seed=0", "train.outer_steps=5"], "maml", 0, 0.7)  # run a's settings again
    for age, name in enumerate(("f", "a")):  # a finished last: f is the repeat
        os.utime(tmp_path / name / "metrics.json", (1e9 + age, 1e9 + age))
    runs = report.find_runs([tmp_path])
    assert report.swept_keys([r for r in runs if r.finished]) == ["algo", "budget"]
    assert report.common_settings([r for r in runs if r.finished]) == ["train.outer_steps=5"]
    rows = report.sweep_rows(runs)
    assert [(row.settings, row.seeds) for row in rows] == [
        ({"algo": "maml", "budget": "-"}, 2),
        ({"algo": "reptile", "budget": "smoke"}, 1),
    ]
    assert report.percent(rows[1].test) == "40.0 ± 5.0" and rows[0].test.over == "seeds"
    assert report.percent(rows[0].test).startswith("70.0 ± ")  # seeds 0 and 1 once each: a (0.6) and b (0.8)
    assert [r.folder.name for r in rows[0].repeats] == ["f"]
    skipped = report.not_in_table(runs, rows, [tmp_path])
    assert "Unfinished runs (1, not in the table" in skipped and "- `e`" in skipped
    assert "Runs without a checkpoint (1, not in the table" in skipped and "- `d`" in skipped
    assert "Repeated runs (1, not in the table" in skipped and "- `f` (seed 0, algo=maml, budget=-)" in skipped


def test_the_validation_column_gives_the_score_that_kept_each_run(tmp_path):
    def fake(name, algo, seed, **scores):
        metrics = {"test_acc": 0.8, "test_ci95": 0.05, "test_episodes": 10, "seed": seed, **scores}
        return report.Run(tmp_path / name, {"algo": algo}, metrics)

    runs = [
        fake("a", "maml", 0, val_acc=0.75),
        fake("b", "protonet", 0, select_by="balanced_accuracy", val_balanced_acc=0.62),
        fake("c", "reptile", 0, select_by="balanced_accuracy", val_balanced_acc=0.6),
        fake("d", "reptile", 1, val_acc=0.7),  # kept by another score than its row's other seed
    ]
    rows = report.group_runs(runs, lambda run: {"algo": run.setting("algo")})
    cells = {row.settings["algo"]: report.table([row]).splitlines()[-1].split(" | ")[-2] for row in rows}
    assert cells == {"maml": "75.0", "protonet": "62.0 (balanced accuracy)", "reptile": "-"}
    assert "| 62.0 (balanced accuracy) |" in report.runs_table(runs, [tmp_path])


def test_t_quantiles_against_the_t_distribution():
    """Each quantile puts 0.975 of Student's t below it (its density integrated by Simpson's rule), and matches the
    closed forms for 1 and 2 degrees of freedom and the printed tables."""

    def cdf(t, df, n=4000):
        c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
        f = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
        h = t / n
        total = f(0) + f(t) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
        return 0.5 + total * h / 3

    for df in [*range(1, 31), 31, 40, 60, 120, 1000]:
        assert abs(cdf(stats.t_quantile_975(df), df) - 0.975) < 1e-7, df
    assert stats.t_quantile_975(1) == pytest.approx(math.tan(0.475 * math.pi), abs=1e-8)
    assert stats.t_quantile_975(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), abs=1e-8)
    for df, printed in T_975.items():
        assert round(stats.t_quantile_975(df), 3) == printed, df
    assert stats.t_quantile_975(10**6) == pytest.approx(stats.Z_975, abs=1e-5)
    with pytest.raises(ValueError):
        stats.t_quantile_975(0)


def test_interval_across_seeds_and_over_episodes():
    two = report.across_seeds([0.6, 0.8])
    assert two.over == "seeds" and two.mean == pytest.approx(0.7)
    assert two.half_width == pytest.approx(12.706204736 * 0.1)  # sd 0.1414, / sqrt(2)
    three = report.across_seeds([0.5, 0.6, 0.7], episode_half_width=0.01)  # the episode interval is not used
    assert three.half_width == pytest.approx(4.302652730 * 0.1 / math.sqrt(3))
    one = report.across_seeds([0.55], episode_half_width=0.04)
    assert (one.mean, one.half_width, one.over) == (0.55, 0.04, "episodes")
    assert report.percent(one) == "55.0 ± 4.0" and report.percent(report.across_seeds([0.5])) == "50.0"


def test_runs_of_an_unknown_seed_are_all_counted(tmp_path):
    runs = [report.Run(tmp_path / name, {"algo": "maml"}, {"test_acc": acc, "test_ci95": 0.05, "test_episodes": 10})
            for name, acc in (("a", 0.6), ("b", 0.8))]  # fmt: skip
    [row] = report.group_runs(runs, lambda run: {"algo": "maml"})
    assert row.seeds == 2 and row.repeats == []

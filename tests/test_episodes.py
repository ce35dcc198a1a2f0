import random

import pytest
import torch

from metarun.data import generate_synthetic
from metarun.episodes import EpisodeSampler, class_groups, split_keys, split_rows
from metarun.errors import UserError
from metarun.tokenizer import encode, fit_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return generate_synthetic(n_domains=4, classes_per_domain=8, examples_per_class=20)


def samplers(corpus, by_domain, n_way=5, k_shot=2, n_query=3, val=0.25, test=0.25):
    keys = corpus.domains if by_domain else corpus.labels
    split = split_keys(keys, val, test, seed=0)
    rows = split_rows(keys, split)
    tokens = encode(fit_tokenizer([corpus.texts[i] for i in rows["train"]], 500, 24), corpus.texts)
    classes = corpus.class_keys(by_domain)
    out = {}
    for name, index in rows.items():
        groups = class_groups([classes[i] for i in index], [corpus.domains[i] for i in index] if by_domain else None)
        out[name] = EpisodeSampler(tokens[index], [classes[i] for i in index], groups, n_way, k_shot, n_query, name)
    return split, out, tokens


@pytest.mark.parametrize("by_domain", [False, True])
def test_meta_splits_are_disjoint_and_cover_every_key(corpus, by_domain):
    split, sampled, _ = samplers(corpus, by_domain)
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert not (train & val or train & test or val & test)
    keys = set(corpus.domains if by_domain else corpus.labels)
    assert train | val | test == keys
    seen = {name: set(s.classes) for name, s in sampled.items()}
    assert not (seen["train"] & seen["test"] or seen["train"] & seen["val"] or seen["val"] & seen["test"])


def test_test_keys_follow_the_documented_sample():
    keys = [f"intent_{i:03d}" for i in range(150)]
    split = split_keys(keys, val=15, test=50, seed=0)
    assert split.test == sorted(random.Random(0).sample(sorted(keys), 50))
    assert len(split.val) == 15 and len(split.train) == 85


@pytest.mark.parametrize("by_domain", [False, True])
def test_episode_shape_classes_and_disjoint_support_query(corpus, by_domain):
    _, sampled, _ = samplers(corpus, by_domain)
    sampler = sampled["train"]
    rng = random.Random(3)
    for _ in range(20):
        episode = sampler.sample(rng)
        assert episode.n_way == 5 and len(set(episode.class_ids.tolist())) == 5
        assert torch.bincount(episode.support_y).tolist() == [2] * 5
        assert torch.bincount(episode.query_y).tolist() == [3] * 5
        classes = [sampler.classes[i] for i in episode.class_ids]
        if by_domain:  # one domain per episode
            assert len({c.split("/")[0] for c in classes}) == 1
        support = {tuple(r.tolist()) for r in episode.support_x}
        query = {tuple(r.tolist()) for r in episode.query_x}
        assert len(support) == 10 and len(query) == 15


def test_support_and_query_rows_are_disjoint_and_of_the_labelled_class(corpus):
    keys = corpus.labels
    tokens = torch.arange(2, len(keys) + 2).unsqueeze(1)  # each row's one token is its row number + 2
    sampler = EpisodeSampler(tokens, keys, class_groups(keys, None), 5, 3, 7, "train")
    rng = random.Random(0)
    for _ in range(50):
        episode = sampler.sample(rng)
        support, query = (episode.support_x[:, 0] - 2).tolist(), (episode.query_x[:, 0] - 2).tolist()
        assert not set(support) & set(query) and len(set(support + query)) == len(support + query)
        for row, label in zip(support + query, torch.cat([episode.support_y, episode.query_y]).tolist()):
            assert keys[row] == sampler.classes[episode.class_ids[label]]


def test_labels_are_permuted_per_episode(corpus):
    _, sampled, _ = samplers(corpus, by_domain=False)
    rng = random.Random(0)
    orders = {tuple(sampled["train"].sample(rng).class_ids.tolist()) for _ in range(20)}
    assert any(list(o) != sorted(o) for o in orders)


def test_same_seed_gives_the_same_episodes(corpus):
    _, sampled, _ = samplers(corpus, by_domain=False)
    first = sampled["test"].fixed_episodes(5, seed=7)
    again = sampled["test"].fixed_episodes(5, seed=7)
    other = sampled["test"].fixed_episodes(5, seed=8)
    for a, b in zip(first, again):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
        assert torch.equal(a.class_ids, b.class_ids)
    assert any(not torch.equal(a.class_ids, b.class_ids) for a, b in zip(first, other))


def test_n_way_larger_than_the_split_is_refused(corpus):
    with pytest.raises(UserError, match=r"task.n_way=9 is larger than the 8 usable classes"):
        samplers(corpus, by_domain=True, n_way=9)


def test_classes_too_small_for_k_plus_q_are_named_and_can_be_dropped(corpus):
    keys = corpus.labels
    tokens = torch.ones(len(keys), 4, dtype=torch.long)
    rows = [i for i, k in enumerate(keys) if not (k == keys[0] and i % 2)]  # halve the first class
    classes = [keys[i] for i in rows]
    groups = class_groups(classes, None)
    with pytest.raises(UserError, match=keys[0]) as error:
        EpisodeSampler(tokens[rows], classes, groups, 5, 5, 10, "train")
    assert "task.drop_small_classes=true" in str(error.value)
    sampler = EpisodeSampler(tokens[rows], classes, groups, 5, 5, 10, "train", drop_small_classes=True)
    assert keys[0] not in sampler.classes and len(sampler.classes) == len(set(keys)) - 1


def shared_labels(domains=("books", "dvd", "kitchen"), labels=("negative", "positive"), rows_per_class=6):
    """Sentiment-like data: every domain has the same labels; class keys are domain/label."""
    keys = [f"{d}/{label}" for d in domains for label in labels for _ in range(rows_per_class)]
    tokens = torch.arange(len(keys))[:, None] + 2  # one distinct token per row
    return tokens, keys, class_groups(keys, [k.split("/")[0] for k in keys])


def test_fixed_labels_keep_each_label_name_on_its_id_in_every_episode():
    tokens, keys, groups = shared_labels()
    fixed = EpisodeSampler(tokens, keys, groups, 2, 2, 3, "train", fixed_labels=True)
    permuted = EpisodeSampler(tokens, keys, groups, 2, 2, 3, "train")
    seen = set()
    for sampler, episodes in ((fixed, fixed.fixed_episodes(40, 0)), (permuted, permuted.fixed_episodes(40, 0))):
        for episode in episodes:
            label_of_row = {int(t): keys[int(t) - 2].split("/")[1] for t in episode.support_x[:, 0]}
            ids = {label_of_row[int(t)]: int(y) for t, y in zip(episode.support_x[:, 0], episode.support_y)}
            if sampler is fixed:
                assert ids == {"negative": 0, "positive": 1}  # the sorted names' places, whatever the draw
                # what a supervised baseline trains each row on, class_ids[label], is the row's own label id
                names = [label_of_row[int(t)] for t in episode.support_x[:, 0]]
                assert episode.class_ids[episode.support_y].tolist() == [ids[n] for n in names]
            else:
                seen.add(ids["negative"])
    assert seen == {0, 1}  # permuted: "negative" is label 0 in some episodes and 1 in others
    # a supervised baseline pre-trains on what class_ids count: the 2 shared labels, not 6 domain x label classes
    assert (fixed.n_classes, permuted.n_classes) == (2, 6)


def test_natural_queries_follow_each_domains_label_frequencies_and_never_repeat_the_support():
    """One domain 90% positive, one 50%: balanced queries hide that; natural ones show it, support stays K per class."""
    keys = [f"{d}/{label}" for d, n_pos in (("toys", 90), ("dvd", 50)) for label, n in (("neg", 100 - n_pos),
            ("pos", n_pos)) for _ in range(n)]  # fmt: skip
    tokens = torch.arange(len(keys))[:, None] + 2  # one distinct token per row
    groups = class_groups(keys, [k.split("/")[0] for k in keys])
    natural = EpisodeSampler(tokens, keys, groups, 2, 3, 5, "train", fixed_labels=True, natural_query=True)
    balanced = EpisodeSampler(tokens, keys, groups, 2, 3, 5, "train", fixed_labels=True)
    positive = {"toys": [], "dvd": []}
    for episode in natural.fixed_episodes(400, 0):
        support, query = episode.support_x[:, 0].tolist(), episode.query_x[:, 0].tolist()
        domain = keys[support[0] - 2].split("/")[0]
        assert all(keys[t - 2].startswith(domain) for t in support + query)  # one domain per episode
        assert not set(support) & set(query) and len(set(query)) == len(query) == 10
        assert sorted(episode.support_y.tolist()) == [0, 0, 0, 1, 1, 1]
        assert [keys[t - 2].endswith("/pos") for t in support] == [bool(y) for y in episode.support_y.tolist()]
        assert [keys[t - 2].endswith("/pos") for t in query] == [bool(y) for y in episode.query_y.tolist()]
        positive[domain].append(episode.query_y.float().mean().item())
    share = {d: sum(v) / len(v) for d, v in positive.items()}
    # 90 of 100 rows are positive, 87 of the 94 left after a 3 + 3 support: the queries' share is 87/94 = 0.93
    assert share["toys"] == pytest.approx(87 / 94, abs=0.02) and share["dvd"] == pytest.approx(0.5, abs=0.03)
    assert all(e.query_y.float().mean() == 0.5 for e in balanced.fixed_episodes(20, 0))


def test_fixed_labels_leave_out_a_domain_without_every_label_and_refuse_another_n_way(caplog):
    tokens, keys, groups = shared_labels()
    keys = [k for k in keys if k != "dvd/positive"]  # dvd has lost its positive reviews
    tokens, groups = tokens[: len(keys)], class_groups(keys, [k.split("/")[0] for k in keys])
    sampler = EpisodeSampler(tokens, keys, groups, 2, 2, 3, "train", fixed_labels=True)
    assert sampler.group_names == ["books", "kitchen"] and "dvd" in caplog.text
    tokens, keys, groups = shared_labels(labels=("negative", "neutral", "positive"))
    with pytest.raises(UserError, match=r"task.labels=fixed .* has 3 label names .* task.n_way=3"):
        EpisodeSampler(tokens, keys, groups, 2, 2, 3, "train", fixed_labels=True)


def test_a_domain_too_small_for_an_episode_is_left_out_with_a_warning(caplog):
    tokens, keys, groups = shared_labels()
    groups["tiny"] = ["books/negative"]  # a domain with one usable class cannot form a 2-way episode
    sampler = EpisodeSampler(tokens, keys, groups, 2, 2, 3, "train")
    assert "tiny" not in sampler.group_names and "tiny" in caplog.text and "left out" in caplog.text

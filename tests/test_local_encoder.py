"""Any local encoder (`model=hf model.name_or_path=<folder>`), offline: a transformers folder and a sentence-
transformers folder around it, pooled as the folder says or as `model.pooling` says, pickle weights and pooling
metarun lacks refused. The encoder is a tiny random BERT these tests build and save themselves."""

import importlib.util
import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import save_tiny_bert, smoke
from metarun import cli
from metarun.errors import UserError
from metarun.tokenizer import encode

transformers = pytest.importorskip("transformers")
from metarun.pretrained import PretrainedClassifier, pretrained_tokenizer  # noqa: E402

TEXTS = ["please book a table", "what is my balance", "play jazz", "ok"]
WORDS = ["please", "book", "a", "table", "what", "is", "my", "balance", "play", "jazz", "ok", "good", "bad"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """transformers' layout: a random BERT (32 wide, 2 layers) saved by save_pretrained, and its WordPiece tokenizer
    (words, letters and continuing letters: about 100 pieces)."""
    folder = save_tiny_bert(tmp_path_factory.mktemp("bert"), tuple(WORDS), width=32, ff=37)
    assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()
    return folder


def sentence_folder(bert_folder, folder, pooling: dict, subfolder="0_Transformer", normalize=False):
    """sentence-transformers' layout around `bert_folder`: modules.json, the BERT's files in `subfolder` ("" at the
    top, as all-MiniLM-L6-v2 has them), 1_Pooling/config.json with `pooling`, and 2_Normalize if `normalize`."""
    shutil.copytree(bert_folder, folder / subfolder, dirs_exist_ok=True)
    modules = [("Transformer", subfolder), ("Pooling", "1_Pooling")] + [("Normalize", "2_Normalize")] * normalize
    (folder / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(modules)
    ]))  # fmt: skip
    for _, path in modules[1:]:
        (folder / path).mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    return folder


def old_switches(mode: str) -> dict:
    """A Pooling config as sentence-transformers wrote it before version 6: one boolean per mode."""
    names = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens", "mean_sqrt_len": "mean_sqrt_len_tokens"}
    return {f"pooling_mode_{name}": key == mode for key, name in names.items()} | {"include_prompt": True}


def features(folder, **kwargs):
    """metarun's text vectors for TEXTS from the encoder in `folder`."""
    tokenizer = pretrained_tokenizer(str(folder), max_len=16)
    model = PretrainedClassifier(str(folder), 3, tokenizer.get_vocab_size(), pad_id=0, max_len=16, **kwargs)
    with torch.no_grad():
        return model.eval()(encode(tokenizer, TEXTS), features_only=True), model, tokenizer


def by_hand(bert_folder, mode: str) -> torch.Tensor:
    """transformers' own BertModel forward on TEXTS, pooled here by hand as sentence-transformers pools."""
    bert = transformers.BertModel.from_pretrained(bert_folder).eval()
    batch = transformers.BertTokenizerFast.from_pretrained(bert_folder)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).bool()
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(~mask, float("-inf")).max(1).values
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_a_transformers_folder_embeds_as_bert_then_its_pooling(bert_folder, pooling):
    """model.pooling chooses for a folder without a Pooling config (null there is mean); the layer-by-layer path
    from cached hidden states pools the same way."""
    ours, model, tokenizer = features(bert_folder, pooling=None if pooling == "mean" else pooling)
    assert model.pooling == pooling and not model.normalize
    torch.testing.assert_close(ours, by_hand(bert_folder, pooling), rtol=1e-5, atol=1e-5)
    tokens = encode(tokenizer, TEXTS)
    with torch.no_grad():
        hidden = model(tokens, until_layer=1)
        torch.testing.assert_close(model(tokens, features_only=True, hidden=hidden, from_layer=1), ours)


@pytest.mark.parametrize(
    "pooling, subfolder, mode",
    [({"pooling_mode": "cls", "include_prompt": True}, "0_Transformer", "cls"), (old_switches("cls"), "", "cls"),
     (old_switches("max"), "0_Transformer", "max"), ({"pooling_mode": ["mean"]}, "", "mean")],
)  # fmt: skip
def test_a_sentence_transformers_folder_pools_as_its_config_says(bert_folder, tmp_path, pooling, subfolder, mode):
    """Both Pooling config formats (sentence-transformers 6's `pooling_mode`, older `pooling_mode_*` switches), the
    encoder's files in a subfolder or at the top, and L2 normalisation where modules.json lists a Normalize."""
    folder = sentence_folder(bert_folder, tmp_path, pooling, subfolder, normalize=True)
    ours, model, _ = features(folder)
    assert model.pooling == mode and model.normalize
    torch.testing.assert_close(ours, F.normalize(by_hand(bert_folder, mode), dim=-1), rtol=1e-5, atol=1e-5)
    assert features(folder, pooling="mean", normalize=False)[1].pooling == "mean"  # the config overrides the folder


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="needs sentence-transformers")
@pytest.mark.parametrize("mode", ["cls", "max"])
def test_sentence_transformers_itself_agrees_on_the_folders_written_here(bert_folder, tmp_path, mode):
    """sentence-transformers itself reads the folder `sentence_folder` writes, and agrees with metarun."""
    from sentence_transformers import SentenceTransformer

    folder = sentence_folder(bert_folder, tmp_path, {"pooling_mode": mode}, normalize=True)
    theirs = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(features(folder)[0], theirs, rtol=1e-5, atol=1e-5)


def test_a_sentence_transformers_folder_runs_end_to_end_from_the_command_line(bert_folder, tmp_path, run_cli):
    """`metarun model=hf model.name_or_path=<folder>` as a user types it: 3 outer steps of MAML through max pooling
    and the encoder in 0_Transformer, 3 test episodes, offline."""
    folder = sentence_folder(bert_folder, tmp_path / "encoder", {"pooling_mode": "max"})
    args = ["model=hf", f"model.name_or_path={folder}", "algo=maml", "algo.inner_steps=1", "algo.eval_inner_steps=2",
            "train.outer_steps=3", "eval.val_interval=3", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    code, _, stderr = run_cli(cli.main, *smoke(*args))
    assert code == 0, stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "hf" and 0.0 <= metrics["test_acc"] <= 1.0


def test_a_folder_with_pickle_weights_only_is_refused_unread(bert_folder, tmp_path, monkeypatch):
    pickled = tmp_path / "pickled"
    shutil.copytree(bert_folder, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(transformers.BertModel.from_pretrained(bert_folder).state_dict(), pickled / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("metarun unpickled a weights file"))
    with pytest.raises(UserError) as refused:
        features(pickled)
    message = str(refused.value)
    assert f"{pickled} holds its weights only as pytorch_model.bin" in message
    assert "safetensors only, never pickle" in message and f".save_pretrained('{pickled}')" in message


@pytest.mark.parametrize(
    "pooling, asked",
    [(old_switches("mean_sqrt_len"), "mean_sqrt_len_tokens"), ({"pooling_mode": "lasttoken"}, "lasttoken"),
     ({"pooling_mode": ["cls", "mean"]}, "cls + mean")],
)  # fmt: skip
def test_pooling_metarun_lacks_is_refused_unless_chosen(bert_folder, tmp_path, pooling, asked):
    folder = sentence_folder(bert_folder, tmp_path, pooling)
    refusal = f"asks for pooling {asked}; metarun pools by exactly one of mean, cls, max."
    with pytest.raises(UserError, match=re.escape(refusal)):
        features(folder)
    assert features(folder, pooling="cls")[1].pooling == "cls"  # model.pooling is the way out the message names


def test_an_unknown_model_pooling_is_refused_by_the_command_line(tmp_path, run_cli):
    code, _, stderr = run_cli(cli.main, "model=hf", "model.name_or_path=/none", "model.pooling=median",
                              f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert code == 2 and "model.pooling='median' is not valid; use one of: mean, cls, max" in " ".join(stderr.split())


def test_a_sentence_transformers_module_metarun_does_not_run_is_refused(bert_folder, tmp_path):
    folder = sentence_folder(bert_folder, tmp_path, {"pooling_mode": "mean"})
    modules = json.loads((folder / "modules.json").read_text())
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    (folder / "modules.json").write_text(json.dumps([*modules, dense]))
    with pytest.raises(UserError, match=re.escape("lists module(s) Dense that metarun does not run")):
        features(folder)

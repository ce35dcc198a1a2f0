"""metarun-export: a run's meta-learned encoder as a Hugging Face folder that transformers and sentence-transformers
load offline and that embeds as the run does; metarun's own Transformer is refused."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import smoke
from metarun import cli, load
from metarun.tokenizer import encode

transformers = pytest.importorskip("transformers")
from test_local_encoder import TEXTS, bert_folder, sentence_folder  # noqa: E402, F401 (bert_folder: a fixture)


LORA = ("model.lora_rank=2", "algo.inner_scope=lora", "algo.outer_scope=lora")  # adapters meta-learned


@pytest.fixture(params=[(), LORA], ids=["whole encoder", "lora"])
def exported(bert_folder, tmp_path, run_cli, request):  # noqa: F811
    """A MAML run on a tiny random BERT in sentence-transformers' layout (max pooling, normalised), exported."""
    encoder = sentence_folder(bert_folder, tmp_path / "encoder", {"pooling_mode": "max"}, subfolder="", normalize=True)
    args = ["model=hf", f"model.name_or_path={encoder}", "algo=maml", "algo.inner_steps=1", "algo.eval_inner_steps=1",
            "train.outer_steps=3", "eval.val_interval=3", *request.param,
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    assert run_cli(cli.main, *smoke(*args))[0] == 0
    code, stdout, stderr = run_cli(cli.export_main, f"run={tmp_path / 'run'}", f"out={tmp_path / 'out'}")
    assert code == 0, stderr
    assert f"exported to: {(tmp_path / 'out').resolve()}" in stdout
    return tmp_path / "run", tmp_path / "out", encoder


def metarun_features(run) -> torch.Tensor:
    model = load(run, device="cpu")
    with torch.no_grad():
        return model.algorithm.model.eval()(encode(model.tokenizer, TEXTS), features_only=True)


def test_transformers_loads_the_meta_learned_encoder_which_embeds_as_the_run_does(exported):
    run, out, encoder = exported
    bert = transformers.AutoModel.from_pretrained(out).eval()
    batch = transformers.AutoTokenizer.from_pretrained(out)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).bool()
    theirs = torch.nn.functional.normalize(hidden.masked_fill(~mask, float("-inf")).max(1).values, dim=-1)
    torch.testing.assert_close(theirs, metarun_features(run), rtol=1e-5, atol=1e-5)
    before, after = load_file(encoder / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in after if k in before)  # meta-training moved them
    assert not [k for k in after if "lora" in k]  # adapters folded in: nothing a plain BERT would not load
    told = json.loads((out / "metarun_export.json").read_text())
    assert (told["pooling"], told["normalize"], told["step"]) == ("max", True, load(run).step)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="needs sentence-transformers")
def test_sentence_transformers_loads_it_with_the_runs_pooling(exported):
    from sentence_transformers import SentenceTransformer

    run, out, _ = exported
    theirs = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(theirs, metarun_features(run), rtol=1e-5, atol=1e-5)


def test_an_export_never_writes_into_a_folder_that_holds_files(exported, run_cli):
    run, out, _ = exported
    kept = sorted(p.name for p in out.iterdir())
    code, _, stderr = run_cli(cli.export_main, f"run={run}", f"out={out}")
    assert code == 2 and "already exists and is not an empty folder" in " ".join(stderr.split())
    assert sorted(p.name for p in out.iterdir()) == kept


def test_a_run_of_metaruns_own_transformer_is_refused_clearly(tmp_path, run_cli):
    assert run_cli(cli.main, *smoke(f"hydra.run.dir={tmp_path / 'run'}"))[0] == 0
    code, _, stderr = run_cli(cli.export_main, f"run={tmp_path / 'run'}", f"out={tmp_path / 'out'}")
    told = " ".join(stderr.split())
    assert code == 2 and "meta-trained model=tiny, metarun's own Transformer, which no Hugging Face class" in told
    assert not (tmp_path / "out").exists()

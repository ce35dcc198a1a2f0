"""The feature cache (metarun.feature_store): a table is read again by a later run on the same texts and frozen
weights, and computed again when either changes; its values are float16 within float16's precision of the float32
computation, each text only as long as it is; a partial build is never read; a table that would not fit the disk is
refused after its first batch; two builders of one table both finish; and reading every row keeps resident memory at
a batch, far below the table's size."""

import json
import os
import re
import subprocess
import sys
from collections import namedtuple

import pytest
import torch

from conftest import compose_config, tiny_model
from metarun import feature_store
from metarun.algorithms import MAML
from metarun.algorithms.caching import cached, table_source
from metarun.errors import UserError
from metarun.feature_store import Source, table_key
from metarun.features import FeatureTable, unique_rows
from metarun.model import TransformerClassifier


@pytest.fixture(autouse=True)
def folder(tmp_path, monkeypatch):
    """Every table of these tests is kept here, never in the user's cache."""
    folder = tmp_path / "features"
    monkeypatch.setenv(feature_store.ENV, str(folder))
    return folder


def model32(seed: int = 0, n_heads: int = 2) -> TransformerClassifier:
    torch.manual_seed(seed)
    return TransformerClassifier(vocab_size=30, n_classes=3, d_model=8, n_layers=2, n_heads=n_heads, d_ff=16,
                                 max_len=10, dropout=0.0)  # fmt: skip


def lower_layer_frozen(model) -> MAML:
    """Meta-training changes only the top layer and the head: it reads layer 0's output from a table."""
    return MAML(model, head_init="learned", inner_scope="head", outer_scope="top", top_layers=1)


def corpus(rows: int = 40, width: int = 8, seed: int = 0) -> torch.Tensor:
    """Distinct random texts of 2 to `width` tokens, padded on the right."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 30, (rows, width), generator=g)
    lengths = torch.randint(2, width + 1, (rows,), generator=g)
    tokens[torch.arange(width)[None, :] >= lengths[:, None]] = 0
    return torch.unique(tokens, dim=0)


def kept_table(algorithm, tokens: torch.Tensor) -> FeatureTable:
    params = dict(algorithm.model.named_parameters())
    return cached(algorithm, params, [tokens], algorithm.trained_names(), keep=True).cache


def forward_calls(model) -> list:
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_second_run_on_the_same_texts_reads_the_kept_table_and_computes_nothing(folder, capsys):
    tokens = corpus()
    first_model, second_model = model32(), model32()  # another run of the same config: the same weights
    first_calls, second_calls = forward_calls(first_model), forward_calls(second_model)
    first = kept_table(lower_layer_frozen(first_model), tokens)
    (entry,) = entries(folder)
    out = capsys.readouterr().out
    assert first_calls and f"features: computed for {len(tokens)} texts" in out and str(folder / entry) in out
    assert "frozen features" in out  # its progress, as lines here where stdout is no terminal
    second = kept_table(lower_layer_frozen(second_model), tokens)
    assert second_calls == [] and entries(folder) == [entry]
    assert capsys.readouterr().out.strip() == f"features: reused {folder / entry} ({len(tokens)} texts)"
    assert torch.equal(first(tokens), second(tokens))


def one_token_changed(tokens):
    tokens = tokens.clone()
    tokens[0, 0] = tokens[0, 0] % 29 + 1
    return tokens


def weight_changed(model, layer: int):
    with torch.no_grad():
        model.layers[layer].ff[0].weight[0, 0] += 0.5
    return model


CHANGES = {  # what a second run changes -> whether it computes the table again
    "one token of one text": (model32, one_token_changed, True),
    "the tokenizer's max_len (texts truncated)": (model32, lambda t: t[:, :4], True),
    "a weight of the frozen layer": (lambda: weight_changed(model32(), 0), lambda t: t, True),
    "the number of attention heads (same weights)": (lambda: model32(n_heads=1), lambda t: t, True),
    "the width the texts are padded to": (model32, lambda t: torch.nn.functional.pad(t, (0, 2)), False),
    "a weight above the frozen layer": (lambda: weight_changed(model32(), 1), lambda t: t, False),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_table_is_computed_again_when_its_texts_or_frozen_weights_change_and_only_then(folder, change):
    make_model, change_tokens, computes = CHANGES[change]
    tokens = corpus()
    kept_table(lower_layer_frozen(model32()), tokens)
    model = make_model()
    calls = forward_calls(model)
    changed = change_tokens(tokens)
    table = kept_table(lower_layer_frozen(model), changed)
    assert bool(calls) == computes and len(entries(folder)) == 1 + computes
    expected = model.hidden_states(changed, 1) * (changed != 0)[..., None]  # zeros past each text's length
    torch.testing.assert_close(table(changed), expected, rtol=2e-3, atol=1e-4)


def test_features_and_hidden_states_are_kept_apart(folder):
    tokens, model = corpus(), model32()
    features = kept_table(MAML(model, head_init="learned", inner_scope="head", outer_scope="top", top_layers=0), tokens)
    hidden = kept_table(lower_layer_frozen(model), tokens)
    assert (features.layers, hidden.layers) == (None, 1) and len(entries(folder)) == 2
    with torch.no_grad():
        torch.testing.assert_close(features(tokens), model(tokens, features_only=True), rtol=2e-3, atol=1e-4)


def test_values_are_float16_within_its_precision_of_the_float32_computation_and_float64_stays_exact(folder):
    tokens, model = corpus(200), model32()
    algorithm, params = lower_layer_frozen(model), dict(model.named_parameters())
    table = kept_table(algorithm, tokens)
    (entry,) = entries(folder)
    meta = json.loads((folder / entry / "meta.json").read_text())
    assert (meta["stored"], meta["computed"]) == ("float16", "float32") and table(tokens).dtype == torch.float32
    with torch.no_grad():
        expected = model.hidden_states(tokens, 1) * (tokens != 0)[..., None]
        torch.testing.assert_close(table(tokens), expected, rtol=1e-3, atol=1e-5)  # float16 keeps 11 bits
        view = cached(algorithm, params, [tokens], algorithm.trained_names(), keep=True)
        torch.testing.assert_close(view.logits(params, tokens), algorithm.logits(params, tokens), rtol=1e-3, atol=1e-3)
    exact = kept_table(lower_layer_frozen(tiny_model()), tokens)  # float64: numerical checks ask for every digit
    with torch.no_grad():
        expected = tiny_model().hidden_states(tokens, 1) * (tokens != 0)[..., None]
        torch.testing.assert_close(exact(tokens), expected, rtol=1e-12, atol=1e-12)


def test_a_table_stores_each_text_at_its_own_length_without_padding(folder):
    tokens = torch.nn.functional.pad(corpus(100), (0, 120))  # padded to 128, as a tokenizer's max_len does
    kept_table(lower_layer_frozen(model32()), tokens)
    (entry,) = entries(folder)
    real_tokens = int((tokens != 0).sum())
    assert (folder / entry / "values.bin").stat().st_size == real_tokens * 8 * 2  # width 8, 2 bytes a value
    assert json.loads((folder / entry / "meta.json").read_text())["vectors"] == real_tokens


def key_of(algorithm, tokens) -> str:
    params = dict(algorithm.model.named_parameters())
    return table_key(table_source(algorithm, params, 1), unique_rows([tokens]))


def test_a_killed_build_leaves_nothing_that_is_read(folder):
    tokens, model = corpus(600, seed=1), model32()  # 3 batches of texts
    algorithm = lower_layer_frozen(model)
    batches = []

    def stopped(params, batch, layers):
        batches.append(1)
        if len(batches) == 2:
            raise KeyboardInterrupt  # Ctrl-C halfway through
        return type(algorithm).hidden_states(algorithm, params, batch, layers)

    algorithm.hidden_states = stopped
    with pytest.raises(KeyboardInterrupt):
        kept_table(algorithm, tokens)
    assert entries(folder) == []  # the partial build removed itself
    key = key_of(lower_layer_frozen(model), tokens)
    killed = folder / f"{key}.partial-99999-deadbeef"  # what a SIGKILL leaves: never cleaned, never read
    killed.mkdir()
    (killed / "values.bin").write_bytes(b"\0" * 10)
    (killed / "meta.json").write_text('{"width": 8, "stored": "float16", "computed": "float32"}')
    complete = kept_table(lower_layer_frozen(model), tokens)(tokens)
    assert entries(folder) == [key, killed.name]
    (folder / key / "values.bin").write_bytes((folder / key / "values.bin").read_bytes()[:-2])  # a damaged copy
    calls = forward_calls(model)
    again = kept_table(lower_layer_frozen(model), tokens)
    assert calls and torch.equal(again(tokens), complete)  # computed again, not read short


def test_a_table_that_would_not_fit_the_disk_is_refused_with_the_numbers(folder, monkeypatch):
    tokens, model = corpus(600, seed=2), model32()
    calls = forward_calls(model)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(feature_store.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    needed = int((tokens != 0).sum()) * 8 * 2
    told = re.escape(f"needs {needed / 1e3:.1f} kB in {folder}, which has 1.0 kB free")
    with pytest.raises(UserError, match=f"{told}.*set {feature_store.ENV} to a folder on a disk with room"):
        kept_table(lower_layer_frozen(model), tokens)
    assert len(calls) == 1 and entries(folder) == []  # refused after the first batch, nothing left behind


def test_two_jobs_building_one_table_at_once_both_finish_with_one_copy(folder):
    tokens, model = corpus(), model32()
    slow = lower_layer_frozen(model)
    raced = []

    def racing(params, batch, layers):  # another sweep job finishes the same table while this one computes
        if not raced:
            raced.append(kept_table(lower_layer_frozen(model), tokens))
        return type(slow).hidden_states(slow, params, batch, layers)

    slow.hidden_states = racing
    table = kept_table(slow, tokens)
    assert len(entries(folder)) == 1 and torch.equal(table(tokens), raced[0](tokens))


def test_validation_tables_and_an_empty_cache_setting_keep_nothing(folder, monkeypatch, capsys):
    tokens, model = corpus(), model32()
    algorithm = lower_layer_frozen(model)
    params = dict(model.named_parameters())
    validation = cached(algorithm, params, [tokens], algorithm.trained_names()).cache  # weights change every time
    assert entries(folder) == [] and capsys.readouterr().out == ""  # a temporary file, unannounced
    monkeypatch.setenv(feature_store.ENV, "")
    unkept = kept_table(algorithm, tokens)
    assert entries(folder) == [] and "kept only while this process runs" in capsys.readouterr().out
    assert torch.equal(unkept(tokens), validation(tokens))


def test_values_beyond_float16s_range_are_refused():
    source = Source("features", "huge", {}, "None")
    with pytest.raises(UserError, match="values up to 1e\\+06, beyond float16's range"):
        FeatureTable(lambda batch: torch.full((len(batch), 4), 1e6), [corpus()], source=source)


def test_a_second_meta_training_run_reads_the_first_runs_table(tmp_path, capsys):
    from metarun.run import run

    cfg = compose_config("algo.outer_scope=top", "algo.top_layers=1", "algo.inner_scope=head")
    run(cfg, tmp_path / "first")
    assert "features: computed for" in capsys.readouterr().out
    run(cfg, tmp_path / "second")
    out = capsys.readouterr().out
    assert "features: reused" in out and "Meta-training leaves the encoder's first layer unchanged" in out


def test_metarun_eval_reads_the_table_of_the_runs_own_meta_test(tmp_path, run_cli, capsys):
    from metarun import cli
    from metarun.run import run

    run(compose_config("algo=protonet"), tmp_path / "run")  # its encoder's features, for every test text
    assert "features: computed for" in capsys.readouterr().out
    code, out, _ = run_cli(cli.eval_main, f"run={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0 and "features: reused" in out


MEMORY_PROBE = r"""
import json, sys, torch
import metarun.progress  # imported by every run before a table is built: not the table's memory
from metarun.feature_store import Source
from metarun.features import FeatureTable

def resident_mb(field):  # VmRSS: now; VmHWM: the peak
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1]) / 1e3

rows, width, dim = map(int, sys.argv[1:])
g = torch.Generator().manual_seed(0)
tokens = torch.randint(1, 30000, (rows, width), generator=g)
tokens[: rows // 2, width // 2 :] = 0  # half the texts half as long
compute = lambda batch: torch.randn(*batch.shape, dim)  # hidden states, as cheap as can be
before = resident_mb("VmRSS")
table = FeatureTable(compute, [tokens], layers=1, source=Source("probe", "probe", {}, "None"))
built = resident_mb("VmHWM")
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on
resting = resident_mb("VmRSS")
for start in range(0, rows, 64):
    table(tokens[start : start + 64])
print(json.dumps({"before": before, "built": built, "resting": resting, "read": resident_mb("VmHWM"),
                  "table": table.values.layout.nbytes / 1e6}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads Linux's peak resident memory")
def test_reading_every_row_of_a_large_table_keeps_resident_memory_at_a_batch(folder):
    found = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "6000", "128", "768"], capture_output=True,
                           text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout  # fmt: skip
    mb = json.loads(found.splitlines()[-1])
    assert mb["table"] > 800  # 6000 texts of 96 tokens on average, 768 wide, in float16
    assert mb["built"] - mb["before"] < mb["table"] / 3  # a batch of 256 texts computed at a time
    assert mb["read"] - mb["resting"] < mb["table"] / 10  # 64 texts read at a time

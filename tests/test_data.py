import json

import pytest

from conftest import CLINC150
from metarun.config import compose
from metarun.data import generate_synthetic, load_clinc150, load_local
from metarun.errors import UserError
from metarun.tokenizer import encode, fit_tokenizer

ROWS = [{"utterance": f"text number {i}", "intent": f"c{i % 3}", "area": f"d{i % 2}"} for i in range(12)]


def write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)
    return path


def test_synthetic_is_deterministic_and_has_both_label_layouts():
    own = generate_synthetic(seed=3)
    assert own == generate_synthetic(seed=3) and own.texts != generate_synthetic(seed=4).texts
    assert len(set(own.labels)) == 120 and len(set(own.domains)) == 10
    per_domain = {d: {lab for lab, dd in zip(own.labels, own.domains) if dd == d} for d in set(own.domains)}
    assert all(not (a & b) for x, a in per_domain.items() for y, b in per_domain.items() if x != y)
    shared = generate_synthetic(seed=3, label_sets="shared", classes_per_domain=6)
    shared_sets = {d: {lab for lab, dd in zip(shared.labels, shared.domains) if dd == d} for d in set(shared.domains)}
    assert len({frozenset(s) for s in shared_sets.values()}) == 1 and len(shared_sets) == 10


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files_with_named_columns(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}", ROWS)
    corpus = load_local(str(path), text_column="utterance", label_column="intent", domain_column="area")
    assert corpus.texts[0] == "text number 0" and corpus.labels[:3] == ["c0", "c1", "c2"]
    assert corpus.domains[:2] == ["d0", "d1"]


def test_split_files_are_pooled(tmp_path):
    files = [str(write(tmp_path / f"{s}.jsonl", ROWS[i::2])) for i, s in enumerate(("train", "test"))]
    corpus = load_local(files, text_column="utterance", label_column="intent")
    assert len(corpus) == len(ROWS) and corpus.domains is None


def test_missing_empty_and_columnless_files_are_named(tmp_path):
    with pytest.raises(UserError, match="not found: '.*nope.jsonl'"):
        load_local(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty: '.*empty.jsonl'"):
        load_local(str(tmp_path / "empty.jsonl"))
    path = write(tmp_path / "cols.jsonl", ROWS)
    with pytest.raises(UserError, match="lacks the column.*'text'.*it has.*'utterance'"):
        load_local(str(path))
    with pytest.raises(UserError, match="ending in one of"):
        (tmp_path / "x.txt").write_text("a")
        load_local(str(tmp_path / "x.txt"))


def test_empty_texts_are_refused_or_dropped(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[4]["utterance"] = "  "
    path = write(tmp_path / "blank.jsonl", rows)
    with pytest.raises(UserError, match=r"row\(s\) .* have empty text \(rows 4\).*data.drop_empty=true"):
        load_local(str(path), text_column="utterance", label_column="intent")
    assert len(load_local(str(path), text_column="utterance", label_column="intent", drop_empty=True)) == 11


@pytest.mark.skipif(not CLINC150.is_dir(), reason="no clinc150/ in $METARUN_DATA or ../shared/data")
def test_clinc150_reads_the_shared_folder():
    corpus = load_clinc150(str(CLINC150))
    assert len(corpus) == 22500 and len(set(corpus.labels)) == 150 and len(set(corpus.domains)) == 10


def test_data_folders_come_from_metarun_data_else_shared_data_beside_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("METARUN_DATA", str(tmp_path / "sets"))
    assert compose("config", ["data=clinc150"]).data.path == str(tmp_path / "sets" / "clinc150")
    monkeypatch.delenv("METARUN_DATA")
    monkeypatch.chdir(tmp_path / "..")
    assert compose("config", ["data=clinc150"]).data.path == str(
        tmp_path.parent.parent / "shared" / "data" / "clinc150"
    )


def test_clinc150_bad_path_is_named(tmp_path):
    with pytest.raises(UserError, match="data.path='.*missing' is not a folder"):
        load_clinc150(str(tmp_path / "missing"))


def test_tokenizer_fitted_on_train_text_still_splits_unseen_words():
    tokenizer = fit_tokenizer(["kavo ribetu please", "dana mobe thanks"] * 20, vocab_size=200, max_len=8)
    ids = encode(tokenizer, ["mabeka please"])[0].tolist()
    assert ids[-1] == 0 and 1 not in ids  # padded to max_len, and no unknown token for an unseen word


def test_tokenizer_ids_do_not_depend_on_hash_order():
    texts = generate_synthetic(n_domains=2, classes_per_domain=5, examples_per_class=10).texts
    vocabularies = [fit_tokenizer(texts, vocab_size=300, max_len=16).get_vocab() for _ in range(4)]
    assert all(v == vocabularies[0] for v in vocabularies)
    assert vocabularies[0]["[PAD]"] == 0 and vocabularies[0]["[UNK]"] == 1


def test_data_files_take_folders_and_glob_patterns(tmp_path):
    for name, label in (("b.train.jsonl", "y"), ("a.train.jsonl", "x"), ("a.test.jsonl", "z")):
        rows = [{"text": f"{label} text {i}", "label": label} for i in range(3)]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "README.txt").write_text("not data\n")
    listed = load_local([str(tmp_path / n) for n in ("a.test.jsonl", "a.train.jsonl", "b.train.jsonl")])
    assert load_local(str(tmp_path)).labels == listed.labels  # a folder: its data files, sorted
    assert load_local(str(tmp_path / "*.train.jsonl")).labels == ["x"] * 3 + ["y"] * 3
    with pytest.raises(UserError, match=r"pattern '.*\*\.dev\.jsonl' matches no file"):
        load_local(str(tmp_path / "*.dev.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .jsonl, .csv or .parquet file"):
        load_local(str(tmp_path / "empty"))

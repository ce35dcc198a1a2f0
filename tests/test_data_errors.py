"""Data errors name the file, the line and the fix; long texts are cut as they are read."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import metarun.data.files as files
from metarun.data import load_local
from metarun.episodes import split_keys
from metarun.errors import UserError

ROWS = [{"text": f"text number {i}", "label": f"c{i % 3}", "domain": f"d{i % 2}"} for i in range(20)]


def jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_non_utf8_jsonl_names_the_line_and_the_fix(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok", "label": "a"}\n\n{"text": "caf\xe9", "label": "b"}\n')
    with pytest.raises(UserError, match=rf"{path}, line 3 is not UTF-8 text: .*0xe9.*Re-save the file as UTF-8"):
        load_local(str(path))


def test_non_utf8_byte_deep_in_a_long_csv_line_is_on_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CHUNK", 7)  # the bad byte arrives in a later piece of the line
    path = tmp_path / "latin1.csv"
    path.write_bytes(b'text,label\n"a long, long text",x\n"na\xefve and more",y\n')
    with pytest.raises(UserError, match=rf"{path}, line 3 is not UTF-8 text: .*0xef"):
        load_local(str(path))


def test_jsonl_row_without_a_field_names_line_field_and_what_it_has(tmp_path):
    lines = [json.dumps(row) for row in ROWS]
    lines[16] = json.dumps({"text": "no label here", "domain": "d0"})
    path = jsonl(tmp_path / "train.jsonl", lines)
    expected = (
        f"{path}, line 17: the row lacks the column(s) 'label'; it has 'text', 'domain'. "
        "Every row needs data.text_column='text' and data.label_column='label'"
    )
    with pytest.raises(UserError, match=re.escape(expected)):
        load_local(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"text": "a" "label": "b"}', r"line 3 is not valid JSON: Expecting ',' delimiter at column 14"),
        ('["a", "b"]', r"line 3 holds '\[\"a\", \"b\"\]', not a JSON object"),
    ],
)
def test_malformed_jsonl_line_is_named(tmp_path, line, problem):
    path = jsonl(tmp_path / "bad.jsonl", [json.dumps(ROWS[0]), "", line])
    with pytest.raises(UserError, match=rf"{path}, {problem}\. Each line must hold one JSON object"):
        load_local(path)


def test_ragged_csv_row_is_named_by_the_line_it_starts_on(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text('text,label\n"two\nlines",a\nplain,b\nhello, world,c\n')
    with pytest.raises(UserError, match=rf"{path}, line 5: the row has 3 fields, the header has 2\. .*quote"):
        load_local(str(path))


def test_csv_without_a_column_names_the_file_and_its_header(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("utterance,label\nhi,a\n")
    with pytest.raises(UserError, match=rf"{path} lacks the column\(s\) 'text'; it has 'utterance', 'label'"):
        load_local(str(path))


def test_csv_and_jsonl_values_read_as_written(tmp_path):
    path = jsonl(tmp_path / "types.jsonl", ['{"text": "a", "label": 1}', "", '{"text": null, "label": "b"}', "  "])
    corpus = load_local(path, drop_empty=True)
    assert corpus.texts == ["a"] and corpus.labels == ["1"]  # blank lines skipped, labels as str, None text dropped
    csv_path = tmp_path / "quoted.csv"
    csv_path.write_bytes('\ufefftext,label\r\n"say ""hi"", then\r\ngo",NA\r\n\r\nplain,007\r\n'.encode())
    corpus = load_local(str(csv_path))
    assert corpus.texts == ['say "hi", then\r\ngo', "plain"] and corpus.labels == ["NA", "007"]


@pytest.mark.parametrize(
    "lines, told",
    [(['{"text": "a", "label": "x"}', '{"text": "b", "label": null}', '{"text": "c", "label": " "}'],
      "2 row(s) have no 'label' (rows 2, 3, counting from 1); every example needs a label"),
     (['{"text": "a", "label": "x"}', '{"text": "b", "label": 3}', '{"text": "c", "label": 4.0}'],
      "the 'label' values mix text and numbers (2 number(s); row 2 has 3), so 3 would be a class of its own")],
)  # fmt: skip
def test_a_missing_label_or_a_number_among_text_labels_is_named_by_file_and_row(tmp_path, lines, told):
    path = jsonl(tmp_path / "labels.jsonl", lines)
    with pytest.raises(UserError, match=re.escape(f"{path}: {told}")):
        load_local(path)


@pytest.mark.parametrize("kind", ["class", "domain"])
def test_too_few_keys_to_split_says_how_many_and_what_to_do(kind):
    noun, fix = ("label", "data.label_column") if kind == "class" else ("domain", "task=fewshot_cls")
    with pytest.raises(UserError, match=rf"The data has 1 distinct {noun}\(s\) \('only'\), .*at least 3 are needed "
                       rf"\(one per split; more, to form task.n_way-way episodes in each\)\. .*{fix}"):  # fmt: skip
        split_keys(["only"] * 40, 0.25, 0.25, seed=0, kind=kind)
    with pytest.raises(UserError, match=r"has 2 distinct label\(s\) \('a', 'b'\)"):
        split_keys(["a", "b", "a"], 0.25, 0.25, seed=0)  # the default kind is "class"
    assert split_keys(["a", "b", "c"], 1, 1, seed=0).train  # three are enough


def test_long_texts_are_cut_with_one_warning_per_file(tmp_path, caplog):
    rows = [dict(r) for r in ROWS]
    rows[3]["text"] = 'é😀\\"x' * 3000  # escapes and characters outside the BMP, written as \uXXXX pairs
    rows[5]["text"] = "y" * 20_000
    path = jsonl(tmp_path / "long.jsonl", [json.dumps(r) for r in rows])
    expected = f"data file {path}: 2 text(s) longer than max_chars=100 characters were cut to their first 100."
    corpus = load_local(path, domain_column="domain", max_chars=100)
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert corpus.texts[3] == rows[3]["text"][:100] and corpus.texts[5] == "y" * 100
    assert corpus.texts[4] == rows[4]["text"] and corpus.labels == [r["label"] for r in rows]
    csv_path = tmp_path / "long.csv"
    csv_path.write_text('text,label\n"' + 'a""b,' * 30_000 + '",x\n' + "z" * 200_000 + ",y\n")
    caplog.clear()
    assert load_local(str(csv_path), max_chars=7).texts == ['a"b,a"b', "zzzzzzz"]
    assert "2 text(s)" in caplog.text


def test_parquet_texts_are_cut(tmp_path, caplog):
    import pandas as pd

    path = tmp_path / "long.parquet"
    pd.DataFrame({"text": ["short", "w" * 10_000], "label": ["a", "b"]}).to_parquet(path)
    assert load_local(str(path), max_chars=50).texts == ["short", "w" * 50]
    assert "1 text(s)" in caplog.text


def test_text_cut_while_streaming_matches_cut_after_parsing(tmp_path, monkeypatch):
    """Tiny pieces and no floor, so cuts and piece ends fall inside escapes, quotes and multi-byte characters."""
    monkeypatch.setattr(files, "CHUNK", 3)
    monkeypatch.setattr(files, "KEEP_AT_LEAST", 0)
    rng = random.Random(0)
    alphabet = ["a", " ", ",", '"', "\\", "\n", "é", "€", "😀", "\t"]
    rows = [{"t": "z" + "".join(rng.choices(alphabet, k=rng.randint(0, 40))), "l": "a"} for _ in range(200)]
    path = jsonl(tmp_path / "mix.jsonl", [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(rows)])
    csv_path = tmp_path / "mix.csv"
    csv_path.write_text("t,l\n" + "".join('"' + r["t"].replace('"', '""') + '",a\n' for r in rows))
    for source in (path, str(csv_path)):
        corpus = load_local(source, text_column="t", label_column="l", max_chars=5)
        assert corpus.texts == [r["t"][:5] for r in rows] and set(corpus.labels) == {"a"}


PEAK = """
import warnings
from metarun.data import load_local
with warnings.catch_warnings(record=True):
    corpus = load_local({path!r})
status = open("/proc/self/status").read()  # this process's own peak; ru_maxrss also counts the parent's pages
print(int(status.split("VmHWM:")[1].split()[0]), max(len(t) for t in corpus.texts))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from Linux's /proc")
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_50_mb_text_does_not_raise_peak_memory(tmp_path, suffix):
    header, start, end = (
        ("", '{"text": "', '", "label": "c"}\n') if suffix == ".jsonl" else ("text,label\n", "", ",c\n")
    )
    peaks = []
    for huge in (False, True):
        path = tmp_path / f"data{int(huge)}{suffix}"
        with path.open("w") as out:  # written in pieces: the test process itself never holds the 50 MB
            out.write(header)
            for i in range(800):
                out.write(f"{start}short text {i}")
                for _ in range(50 if huge and i == 400 else 0):
                    out.write(" many words" * 100_000)  # 1.1 MB at a time
                out.write(end)
        result = subprocess.run([sys.executable, "-c", PEAK.format(path=str(path))], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1], check=True, timeout=60)  # fmt: skip
        peak_kb, longest = map(int, result.stdout.split())
        peaks.append(peak_kb)
        assert longest == (5000 if huge else len("short text 799"))
    assert peaks[1] <= 1.5 * peaks[0], f"peak memory {peaks[0]} kB without the 50 MB text, {peaks[1]} kB with it"

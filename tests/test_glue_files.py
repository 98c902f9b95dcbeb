"""GLUE TSV readers: every task's layout and quirks, and an error with file:line for each bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from roberta_lora.data.glue_files import GLUE_LAYOUTS, read_glue_tsv
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import DataError

from fixtures_glue import TASK_DIRS, glue_rows, sentence, write_glue_fixture, write_tsv

GLUE_TASKS = sorted(TASK_DIRS)


def _read(task: str, path: Path):
    spec = load_task(task)
    return read_glue_tsv(path, task, spec.label_names, spec.score_range)


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_every_layout_reads_hub_columns(tmp_path: Path, task: str) -> None:
    folder = write_glue_fixture(tmp_path, task, n_train=9, n_dev=6)
    spec = load_task(task)
    train = _read(task, folder / "train.tsv")
    assert train.column_names == [*spec.text_columns, "label", "idx"]
    assert len(train) == 9 and train["idx"] == list(range(9))
    first = train[0]
    assert first[spec.text_columns[0]].startswith(sentence(0)[:10]) or task == "sst2"
    if task == "stsb":
        assert train.features["label"].dtype == "float32"
        assert train["label"][:3] == [0.0, 0.5, 1.0]
    else:
        assert train.features["label"].names == list(spec.label_names)
        assert train["label"] == [i % len(spec.label_names) for i in range(9)]
    dev_name = "dev_matched.tsv" if task == "mnli" else "dev.tsv"
    assert len(_read(task, folder / dev_name)) == 6


def test_layout_table_matches_task_files() -> None:
    for task in GLUE_TASKS:
        assert tuple(GLUE_LAYOUTS[task].text_columns) == load_task(task).text_columns


def test_quirks_preserved(tmp_path: Path) -> None:
    mrpc = _read("mrpc", write_glue_fixture(tmp_path, "mrpc") / "train.tsv")
    # The BOM is not part of the first header name, and quotes stay literal text.
    assert mrpc["sentence1"][2].startswith('"The foodservice') and mrpc["sentence1"][1].count('"') == 2
    sst2 = _read("sst2", write_glue_fixture(tmp_path, "sst2") / "train.tsv")
    assert sst2["sentence"][0].endswith(" ")  # SST-2 keeps its trailing space, as the hub does
    cola = _read("cola", write_glue_fixture(tmp_path, "cola") / "train.tsv")
    assert len(cola) == 24 and cola["sentence"][0] == sentence(0)  # no header row eaten
    mnli = _read("mnli", write_glue_fixture(tmp_path, "mnli") / "dev_mismatched.tsv")
    assert mnli["premise"][0] == sentence(0) and mnli["hypothesis"][0] == sentence(5)
    assert mnli["label"][:3] == [0, 1, 2]


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = write_glue_fixture(tmp_path, "rte") / "dev.tsv"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    data = _read("rte", path)
    assert len(data) == 12 and not data["sentence2"][0].endswith("\r")


def _lines(task: str, n: int = 6) -> list[str]:
    header, rows, _ = glue_rows(task, n)
    return (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]


def _replace_field(line: str, index: int, value: str) -> str:
    fields = line.split("\t")
    fields[index] = value
    return "\t".join(fields)


# (task, line index to corrupt (0 = header where present), corruption, expected message part)
MALFORMED = [
    ("rte", 3, lambda s: s + "\textra", "expected 4 tab-separated fields, found 5"),
    ("cola", 2, lambda s: s.rsplit("\t", 1)[0], "expected 4 tab-separated fields, found 3"),
    ("mrpc", 2, lambda s: _replace_field(s, 0, "2"), "unknown label '2'; expected a name or id among 0=not_equivalent"),
    ("qnli", 4, lambda s: _replace_field(s, 3, "entailed"), "unknown label 'entailed'"),
    ("mnli", 1, lambda s: _replace_field(s, -1, "-"), "unknown label '-'; expected a name or id among 0=entailment, 1=neutral, 2=contradiction"),
    ("sst2", 5, lambda s: _replace_field(s, 0, "  "), "empty 'sentence' text"),
    ("wnli", 2, lambda s: _replace_field(s, 2, ""), "empty 'sentence2' text"),
    ("stsb", 3, lambda s: _replace_field(s, -1, "n/a"), "score 'n/a' is not a number"),
    ("stsb", 4, lambda s: _replace_field(s, -1, "5.5"), "score 5.5 is outside the task's range 0.0..5.0"),
    ("stsb", 2, lambda s: _replace_field(s, -1, "nan"), "score 'nan' is not a number"),
    ("qnli", 0, lambda s: s.replace("question", "query"), "header lacks column(s) ['question']"),
    ("mnli", 0, lambda s: s.replace("gold_label", "label"), "header lacks column(s) ['gold_label']"),
]


@pytest.mark.parametrize(("task", "line_index", "corrupt", "expected"), MALFORMED)
def test_malformed_rows_name_file_and_line(tmp_path: Path, task: str, line_index: int, corrupt, expected: str) -> None:
    lines = _lines(task)
    lines[line_index] = corrupt(lines[line_index])
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _read(task, path)
    assert str(info.value).startswith(f"{path}:{line_index + 1}: ")
    assert expected in str(info.value)
    assert info.value.path == str(path) and info.value.line == line_index + 1


def test_non_utf8_byte_names_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\t0\n1\tcaf\xe9\tb\t1\n")
    with pytest.raises(DataError, match=rf"^{path}:3: byte 0xe9 at offset 45 is not valid UTF-8"):
        _read("wnli", path)
    # With MRPC's BOM the offset still counts from the start of the file.
    path.write_bytes(b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\t\xff\tb\n")
    with pytest.raises(DataError, match=rf"^{path}:2: byte 0xff at offset 49 is not valid UTF-8"):
        _read("mrpc", path)


def test_missing_file_lists_folder_and_layout(tmp_path: Path) -> None:
    folder = write_glue_fixture(tmp_path, "rte")
    with pytest.raises(DataError) as info:
        _read("rte", folder / "validation.tsv")
    message = str(info.value)
    assert "GLUE rte file not found" in message and "dev.tsv, train.tsv" in message
    assert "download_glue_data.py" in message


def test_header_only_file_is_an_error(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [])
    with pytest.raises(DataError, match="no data rows"):
        _read("sst2", path)


def test_qqp_skips_malformed_rows_and_logs_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = _lines("qqp", 8)
    lines[3] = "\tWas Muhammad a real historical figure?\t0"  # a known broken QQP row: 3 fields
    lines.insert(6, "77\t1\t2\tquestion split by a stray newline")
    lines[7] = _replace_field(lines[7], 4, "")  # the hub keeps QQP pairs with an empty question2
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="roberta_lora.data.glue_files"):
        data = _read("qqp", path)
    assert len(data) == 7  # 9 data lines - 2 malformed
    assert "skipped 2 malformed row(s) without 6 fields (lines 4, 7)" in caplog.text
    assert "kept 1 row(s) with an empty question" in caplog.text
    assert 2 not in data["idx"] and data["idx"][-1] == 8  # idx counts the file's rows, as on the hub

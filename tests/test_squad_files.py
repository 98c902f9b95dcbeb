"""SQuAD readers: official JSON, JSON lines and parquet give the hub's rows; bad records are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roberta_lora.data.squad_files import read_squad_file, squad_features
from roberta_lora.errors import DataError

from fixtures_glue import squad_document, write_squad_fixture


def test_official_v1(tmp_path: Path) -> None:
    data = read_squad_file(write_squad_fixture(tmp_path / "dev-v1.1.json", 1), version=1)
    assert len(data) == 12 and data.features == squad_features()
    row = data[0]
    assert row["id"] == "q0_0_0" and row["title"].startswith("Article_0")
    text, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
    assert row["context"][start : start + len(text)] == text


def test_official_v2_has_unanswerable(tmp_path: Path) -> None:
    path = write_squad_fixture(tmp_path / "dev-v2.0.json", 2)
    data = read_squad_file(path, version=2)
    empty = [row["id"] for row in data if not row["answers"]["text"]]
    assert len(empty) == 4 and all(qid.endswith("_2") for qid in empty)
    assert data[2]["answers"] == {"text": [], "answer_start": []}
    with pytest.raises(DataError, match=r"no answer, but SQuAD v1.1 .*use the squad_v2 task"):
        read_squad_file(path, version=1)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_hf_style_rows_round_trip(tmp_path: Path, suffix: str) -> None:
    official = read_squad_file(write_squad_fixture(tmp_path / "dev-v2.0.json", 2))
    path = tmp_path / f"rows{suffix}"
    if suffix == ".parquet":
        official.to_parquet(str(path))
    else:
        official.to_json(str(path))  # datasets writes JSON lines, whatever the suffix
    again = read_squad_file(path)
    assert again.to_list() == official.to_list() and again.features == official.features


def _write_doc(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _drop(key: str):
    def corrupt(doc: dict) -> None:
        del doc["data"][1]["paragraphs"][0]["qas"][2][key]

    return corrupt


def _set_start(doc: dict) -> None:
    doc["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] += 3


MALFORMED = [
    (_drop("question"), "data[1].paragraphs[0].qas[2] (id 'q1_0_2').question is missing; expected a str"),
    (_drop("answers"), "data[1].paragraphs[0].qas[2] (id 'q1_0_2').answers is missing; expected a list"),
    (_drop("id"), "data[1].paragraphs[0].qas[2].id is missing"),
    (lambda d: d["data"][1]["paragraphs"][1].pop("context"), "data[1].paragraphs[1].context is missing"),
    (lambda d: d["data"][0].pop("title"), "data[0].title is missing"),
    (lambda d: d.pop("data"), 'expected the official SQuAD layout {"version": ..., "data": [articles]}'),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start="7"),
     "answers[0].answer_start is a str; expected a int"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].update(id="q0_0_0"),
     "question id 'q0_0_0' at data[0].paragraphs[0].qas[1] (id 'q0_0_0') was already used at data[0].paragraphs[0].qas[0]"),
]


@pytest.mark.parametrize(("corrupt", "expected"), MALFORMED)
def test_missing_fields_name_the_record(tmp_path: Path, corrupt, expected: str) -> None:
    doc = squad_document(1)
    corrupt(doc)
    path = _write_doc(tmp_path, doc)
    with pytest.raises(DataError) as info:
        read_squad_file(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_wrong_answer_start_names_qid_and_both_strings(tmp_path: Path) -> None:
    doc = squad_document(1)
    _set_start(doc)
    qa = doc["data"][0]["paragraphs"][1]["qas"][0]
    answer = qa["answers"][0]
    context = doc["data"][0]["paragraphs"][1]["context"]
    with pytest.raises(DataError) as info:
        read_squad_file(_write_doc(tmp_path, doc))
    message = str(info.value)
    assert "data[0].paragraphs[1].qas[0] (id 'q0_1_0')" in message
    assert repr(answer["text"]) in message
    assert repr(context[answer["answer_start"] : answer["answer_start"] + len(answer["text"])]) in message
    assert f"occurs at offset {answer['answer_start'] - 3}" in message and "Fix answer_start" in message


def test_impossible_with_answers_is_an_error(tmp_path: Path) -> None:
    doc = squad_document(2)
    doc["data"][0]["paragraphs"][0]["qas"][2]["is_impossible"] = False  # answers [] but said answerable: fine
    doc["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"] = True
    with pytest.raises(DataError, match=r"qas\[0\] \(id 'q0_0_0'\) has is_impossible = true but 1 answer"):
        read_squad_file(_write_doc(tmp_path, doc))


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    rows = read_squad_file(write_squad_fixture(tmp_path / "dev.json", 1)).to_list()
    del rows[2]["context"]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: line 3: missing field\(s\) \['context'\]"):
        read_squad_file(path)
    path.write_text(json.dumps(rows[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: not a JSON object"):
        read_squad_file(path)


def test_bad_json_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text('{"version": "1.1",\n "data": [,]}', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: not valid JSON"):
        read_squad_file(path)
    path.write_bytes(b'{"version": "1.1",\n"data": [{"title": "Caf\xe9"}]}')
    with pytest.raises(DataError, match=rf"^{path}:2: byte 0xe9 at offset 42 is not valid UTF-8"):
        read_squad_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SQuAD file not found; expected the official train-v1.1.json"):
        read_squad_file(tmp_path / "dev-v1.1.json")

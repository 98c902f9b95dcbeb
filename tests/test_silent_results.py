"""Results that used to come out silently wrong or raw, now clear errors (issue "Training you can leave
running", item 8): adapter configs without their keys, repeated or empty label names, corrupt tensor headers in
`inspect`, NaN / infinite / zero combination weights, non-finite scores and loose predictions in `score`, texts
with nothing in them, and numbers Python's `float` / `int` read too generously.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path

import pytest

from roberta_lora.cli.main import main
from roberta_lora.data.glue_files import parse_label, parse_score, strict_float
from roberta_lora.data.readers import load_split, read_local_file
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import AdapterError, ConfigError, DataError
from roberta_lora.evaluation.scoring import score_predictions, score_with_notes
from roberta_lora.model.config import (
    CONFIG_NAME,
    REQUIRED_KEYS,
    WEIGHTS_NAME,
    AdapterConfig,
    adapter_parameter_count,
    read_adapter_config,
    read_weights_header,
)

from fixtures_glue import TASK_DIRS, glue_rows, squad_document, write_glue_fixture, write_tsv

INVISIBLE = ["\u200b\u200b", "\x01\x02", " \u00a0 ", "\ufeff", "\u2060\u200d"]  # zero-width, control, blank, BOM


# ----------------------------------------------------------------------------- adapters on disk
@pytest.fixture(scope="module")
def saved_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    folder = tmp_path_factory.mktemp("silent") / "adapter"
    LoraWrapperRoberta(model_id=str(tiny_model_dir), label_names=["negative", "positive"], seed=0).save_adapter(folder)
    return folder


def copy_adapter(saved: Path, tmp_path: Path, edit=None) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / WEIGHTS_NAME).write_bytes((saved / WEIGHTS_NAME).read_bytes())
    config = json.loads((saved / CONFIG_NAME).read_text())
    if edit is not None:
        config = edit(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def test_an_empty_config_is_refused_naming_the_missing_keys(saved_adapter, tmp_path) -> None:
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    folder = copy_adapter(saved_adapter, tmp_path, lambda c: {})
    with pytest.raises(AdapterError, match=r"adapter_config.json: missing keys \['task_type', 'num_classes'") as error:
        LoraWrapperRoberta.from_adapter(folder)
    assert all(repr(key) in str(error.value) for key in ("lora_rank", "lora_alpha", "targets", "head"))
    assert "re-save the adapter" in str(error.value)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_each_required_key_is_required(saved_adapter, tmp_path, key) -> None:
    folder = copy_adapter(saved_adapter, tmp_path, lambda c: {k: v for k, v in c.items() if k != key})
    with pytest.raises(AdapterError, match=rf"missing keys \[{key!r}\]"):
        read_adapter_config(folder)


def test_every_key_the_toolkit_writes_includes_the_required_ones(saved_adapter) -> None:
    written = json.loads((saved_adapter / CONFIG_NAME).read_text())
    assert set(REQUIRED_KEYS) <= set(written)
    assert set(REQUIRED_KEYS) <= set(json.loads(AdapterConfig().to_json()))


@pytest.mark.parametrize("key", ["model_type", "method", "base_model", "base_fingerprint", "task", "metrics",
                                 "package_version", "max_length", "doc_stride"])
def test_keys_added_later_or_informational_may_be_absent(saved_adapter, tmp_path, key) -> None:
    """Files written before model_type / method existed are RoBERTa LoRA adapters: they keep loading."""
    folder = copy_adapter(saved_adapter, tmp_path, lambda c: {k: v for k, v in c.items() if k != key})
    config, _ = read_adapter_config(folder)
    assert config.lora_rank == 8 and config.model_type == "roberta" and config.method == "lora"


def test_missing_keys_and_invalid_values_are_reported_together(saved_adapter, tmp_path) -> None:
    folder = copy_adapter(saved_adapter, tmp_path,
                          lambda c: {k: v for k, v in c.items() if k != "lora_alpha"} | {"task_type": "translation"})
    with pytest.raises(AdapterError, match=r"missing keys \['lora_alpha'\].*task_type='translation'"):
        read_adapter_config(folder)


@pytest.mark.parametrize("names, match", [
    (["positive", "positive"], r"repeats \['positive'\]"),
    (["", "positive"], r"holds \[''\], which is not a name"),
    (["\u200b", "positive"], r"holds \['\\u200b'\]"),
    (["negative", " \t"], r"which is not a name"),
])
def test_label_names_must_be_distinct_visible_texts(saved_adapter, tmp_path, tiny_model_dir, names, match) -> None:
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    with pytest.raises(ConfigError, match=match):
        AdapterConfig(label_names=names).validate()
    with pytest.raises(ConfigError, match=match):
        LoraWrapperRoberta(model_id=str(tiny_model_dir), label_names=names)
    folder = copy_adapter(saved_adapter, tmp_path, lambda c: c | {"label_names": names})
    with pytest.raises(AdapterError, match=match):
        read_adapter_config(folder)


# ----------------------------------------------------------------------------- the tensors file's header
def rewrite_header(folder: Path, change) -> None:
    """Replace adapter.safetensors' JSON header by `change(header)` (a dict, or raw bytes), keeping the data."""
    payload = (folder / WEIGHTS_NAME).read_bytes()
    (length,) = struct.unpack("<Q", payload[:8])
    header = change(json.loads(payload[8 : 8 + length]))
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    (folder / WEIGHTS_NAME).write_bytes(struct.pack("<Q", len(raw)) + raw + payload[8 + length :])


def first_tensor(header: dict) -> dict:
    return header[next(k for k in sorted(header) if k != "__metadata__")]


HEADER_DAMAGE = {
    "not-json": (lambda h: b"{" + json.dumps(h).encode()[2:], "not UTF-8 JSON"),
    "a-list": (lambda h: b"[1, 2]", "JSON list"),
    "dtype-unknown": (lambda h: first_tensor(h).update(dtype="F33") or h, "dtype 'F33'"),
    "shape-negative": (lambda h: first_tensor(h).update(shape=[-1]) or h, r"shape \[-1\]"),
    "offsets-past-the-data": (lambda h: first_tensor(h).update(data_offsets=[0, 10**9]) or h, "data_offsets"),
    "shape-and-offsets-disagree": (lambda h: first_tensor(h).update(shape=[*first_tensor(h)["shape"], 2]) or h,
                                   "bytes but its shape"),
    "metadata-not-strings": (lambda h: h.update(__metadata__={"lora_alpha": 8}) or h, "__metadata__"),
}


@pytest.mark.parametrize("kind", HEADER_DAMAGE)
def test_inspect_refuses_a_corrupt_tensor_header_with_one_line(saved_adapter, tmp_path, capsys, kind) -> None:
    change, match = HEADER_DAMAGE[kind]
    folder = copy_adapter(saved_adapter, tmp_path)
    rewrite_header(folder, change)
    with pytest.raises(AdapterError, match=match):
        read_weights_header(folder)
    with pytest.raises(AdapterError, match=match):
        adapter_parameter_count(folder)
    assert main(["inspect", "--adapter", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roberta-lora inspect: error: ") and WEIGHTS_NAME in lines[0]


def test_inspect_of_a_sound_adapter_still_works(saved_adapter, capsys) -> None:
    assert main(["inspect", "--adapter", str(saved_adapter)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["label_names"] == ["negative", "positive"] and shown["size_bytes"] > 0
    assert adapter_parameter_count(saved_adapter) > 0


# ----------------------------------------------------------------------------- combination weights
@pytest.fixture(scope="module")
def bank(tiny_model_dir):
    from roberta_lora.adapters.bank import AdapterBank
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    return AdapterBank(LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0), "a")


@pytest.mark.parametrize("weights, match", [
    ([float("nan"), 0.5], r"weights \[nan\] are not finite"),
    ([float("inf"), 0.5], r"weights \[inf\] are not finite"),
    ([0.5, -float("inf")], r"weights \[-inf\] are not finite"),
    ([0, 0.0], r"weights \[0, 0.0\] are all zero"),
    ([0.5], r"2 adapters and 1 weights"),
    ([0.5, 0.5, 0.5], r"2 adapters and 3 weights"),
    ([], r"2 adapters and 0 weights"),
    (["0.5", 0.5], r"weights \['0.5'\] are not numbers"),
    ([True, 0.5], r"weights \[True\] are not numbers"),
    ([None, 0.5], r"weights \[None\] are not numbers"),
    ("0.5,0.5", r"weights='0.5,0.5' \(expected a list of numbers"),
    (0.5, r"weights=0.5 \(expected a list of numbers"),
])
@pytest.mark.parametrize("combination_type", ["svd", "cat", "linear"])
def test_combination_weights_are_checked(bank, weights, match, combination_type) -> None:
    with pytest.raises(ConfigError, match="cannot combine adapters: .*" + match):
        bank.add_weighted_adapter(["a", "a"], weights, "mix", combination_type=combination_type)
    assert bank.adapters == ["a"]


def test_good_weights_still_combine_and_adapters_must_be_a_list(bank) -> None:
    import numpy as np

    bank.add_weighted_adapter(["a", "a"], np.array([0.25, 0.0]), "quarter", combination_type="cat")
    bank.add_weighted_adapter(("a", "a"), (1, -1), "zero-sum", combination_type="cat")  # a sum of 0 is fine
    assert bank.adapters == ["a", "quarter", "zero-sum"]
    with pytest.raises(ConfigError, match=r"adapters='a' \(expected a list of adapter names"):
        bank.add_weighted_adapter("a", [1.0], "mix")
    bank.delete_adapter("quarter")
    bank.delete_adapter("zero-sum")


# ----------------------------------------------------------------------------- score
def stsb_predictions(tmp_path: Path, values) -> Path:
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps({"index": i, "prediction": v}) + "\n" for i, v in enumerate(values)))
    return path


def test_score_prints_null_for_a_correlation_of_constant_predictions_and_exits_1(tmp_path, capsys) -> None:
    write_glue_fixture(tmp_path, "stsb", n_train=4, n_dev=12)
    predictions = stsb_predictions(tmp_path, [2.5] * 12)
    code = main(["score", "--task", "stsb", "--data", str(tmp_path), "--predictions", str(predictions)])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out) == {"pearson": None, "spearmanr": None}  # valid JSON: no NaN literal
    assert "NaN" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("roberta-lora score: error: pearson, spearmanr are not finite")
    assert "every prediction is 2.5" in lines[0] and "constant" in lines[0]
    metrics, notes = score_with_notes(load_task("stsb"), tmp_path, predictions)
    assert math.isnan(metrics["pearson"]) and set(notes) == {"pearson", "spearmanr"}
    assert math.isnan(score_predictions(load_task("stsb"), tmp_path, predictions)["spearmanr"])


def test_score_of_varied_predictions_exits_0(tmp_path, capsys) -> None:
    write_glue_fixture(tmp_path, "stsb", n_train=4, n_dev=12)
    _, rows, _ = glue_rows("stsb", 12, "dev")
    predictions = stsb_predictions(tmp_path, [float(row[-1]) for row in rows])
    assert main(["score", "--task", "stsb", "--data", str(tmp_path), "--predictions", str(predictions)]) == 0
    assert json.loads(capsys.readouterr().out) == {"pearson": pytest.approx(1.0), "spearmanr": pytest.approx(1.0)}
    assert score_with_notes(load_task("stsb"), tmp_path, predictions)[1] == {}


@pytest.mark.parametrize("task, line, match", [
    ("sst2", '{"index": 2, "prediction": true}', r"pred.jsonl:3: prediction True \(a JSON boolean, not a label\)"),
    ("sst2", '{"index": 2, "prediction": false}', r"pred.jsonl:3: prediction False"),
    ("sst2", '{"index": 2, "prediction": 0.7}', r"pred.jsonl:3: prediction 0.7 is not a label"),
    ("sst2", '{"index": 2, "prediction": "1_0"}', r"pred.jsonl:3: prediction '1_0' is not a label"),
    ("sst2", '{"index": 0.5, "prediction": 1}', r"pred.jsonl:3: index 0.5 is not a row number"),
    ("sst2", '{"index": true, "prediction": 1}', r"pred.jsonl:3: index True is not a row number"),
    ("sst2", '{"index": "2", "prediction": 1}', None),  # a string of digits is a row number
    ("sst2", '{"index": 2.0, "prediction": 1.0}', None),  # so is an integral number
    ("stsb", '{"index": 2, "prediction": true}', r"pred.jsonl:3: prediction True is not a finite number"),
    ("stsb", '{"index": 2, "prediction": NaN}', r"pred.jsonl:3: prediction nan is not a finite number"),
    ("stsb", '{"index": 2, "prediction": Infinity}', r"pred.jsonl:3: prediction inf is not a finite number"),
    ("stsb", '{"index": 2, "prediction": "1_5"}', r"pred.jsonl:3: prediction '1_5' is not a finite number"),
    ("stsb", '{"index": 2, "prediction": "2.5"}', None),
])
def test_score_refuses_loose_predictions_and_indexes(tmp_path, task, line, match) -> None:
    write_glue_fixture(tmp_path, task, n_train=4, n_dev=4)
    rows = [json.dumps({"index": i, "prediction": i % 2}) for i in range(4)]
    rows[2] = line
    (tmp_path / "pred.jsonl").write_text("\n".join(rows) + "\n")
    if match is None:
        assert set(score_predictions(load_task(task), tmp_path, tmp_path / "pred.jsonl"))
        return
    with pytest.raises(DataError, match=match):
        score_predictions(load_task(task), tmp_path, tmp_path / "pred.jsonl")


@pytest.mark.parametrize("index, match", [("1_0", r"index '1_0' is not a row number"),
                                          ("0.5", r"index '0.5' is not a row number"),
                                          ("\u0661", r"index '\u0661' is not a row number")])
def test_score_tsv_indexes_are_plain_digits(tmp_path, index, match) -> None:
    write_glue_fixture(tmp_path, "sst2", n_train=4, n_dev=2)
    (tmp_path / "pred.tsv").write_text(f"index\tprediction\n0\tpositive\n{index}\tnegative\n")
    with pytest.raises(DataError, match="pred.tsv:3: " + match):
        score_predictions(load_task("sst2"), tmp_path, tmp_path / "pred.tsv")


# ----------------------------------------------------------------------------- texts with nothing in them
def text_position(task: str, header: list[str] | None) -> int:
    from roberta_lora.data.glue_files import GLUE_LAYOUTS

    column = list(GLUE_LAYOUTS[task].text_columns.values())[-1]  # the last text (sentence2 of a pair)
    return column if isinstance(column, int) else header.index(column)


@pytest.mark.parametrize("text", INVISIBLE)
@pytest.mark.parametrize("task", sorted(set(TASK_DIRS) - {"qqp"}))
def test_glue_rows_whose_text_holds_nothing_visible_are_refused(tmp_path, task, text) -> None:
    header, rows, bom = glue_rows(task, 5)
    rows[3][text_position(task, header)] = text
    spec = load_task(task)
    path = write_tsv(tmp_path / spec.local_files["train"], header, rows, bom=bom)
    line = 4 + (header is not None)
    with pytest.raises(DataError, match="empty .* text .*(whitespace, control or zero-width|Remove the row)") as error:
        load_split(spec, "train", tmp_path)
    assert (error.value.path, error.value.line) == (str(path), line)
    assert str(error.value).startswith(f"{path}:{line}: ")


def test_qqp_keeps_an_invisible_question_as_it_keeps_an_empty_one(tmp_path, caplog) -> None:
    header, rows, _ = glue_rows("qqp", 5)
    rows[3][header.index("question2")] = "\u200b"
    write_tsv(tmp_path / "QQP" / "train.tsv", header, rows)
    with caplog.at_level(logging.WARNING, logger="roberta_lora"):
        assert len(load_split(load_task("qqp"), "train", tmp_path)) == 5
    assert "kept 1 row(s) with an empty question" in caplog.text


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_table_rows_whose_text_holds_nothing_visible_are_refused(tmp_path, suffix) -> None:
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        path.write_text("text,label\na fine film,pos\n\u200b\u200b,neg\n", encoding="utf-8")
    else:
        path.write_text('{"text": "a fine film", "label": 1}\n{"text": "\\u200b\\u0007", "label": 0}\n')
    with pytest.raises(DataError, match=rf"{path.name}:\d: empty 'text' text \(it holds only"):
        read_local_file(load_task("imdb"), path)


@pytest.mark.parametrize("field", ["question", "context"])
@pytest.mark.parametrize("text", INVISIBLE)
def test_squad_questions_and_contexts_with_nothing_visible_are_refused(tmp_path, field, text) -> None:
    document = squad_document(1, 1, 1, 2)
    paragraph = document["data"][0]["paragraphs"][0]
    if field == "question":
        paragraph["qas"][1]["question"] = text
    else:  # a context of nothing can hold no answer either: the emptiness is what must be reported
        paragraph["context"] = text
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=rf"field '{field}' is .*not only whitespace, control or zero-width"):
        read_local_file(load_task("squad_v1"), path)


# ----------------------------------------------------------------------------- numbers read strictly
@pytest.mark.parametrize("value", ["0_5", "1_000", "nan", "inf", "-inf", "1e999", "\u0663", "\uff13", "3.8.1", "",
                                   "0x1", "five"])
def test_stsb_scores_are_parsed_strictly(tmp_path, value) -> None:
    header, rows, _ = glue_rows("stsb", 5)
    rows[2][header.index("score")] = value
    path = write_tsv(tmp_path / "STS-B" / "train.tsv", header, rows)
    with pytest.raises(DataError, match=r"is not a number; expected a finite decimal number") as error:
        load_split(load_task("stsb"), "train", tmp_path)
    assert (error.value.path, error.value.line) == (str(path), 4)


@pytest.mark.parametrize("value, number", [("3.800", 3.8), ("0", 0.0), ("5", 5.0), (".5", 0.5), ("2.", 2.0),
                                           ("4e-1", 0.4), ("+1.5", 1.5), (" 2.5 ", 2.5)])
def test_plain_decimal_scores_still_read(value, number) -> None:
    assert strict_float(value) == number
    assert parse_score(value, (0.0, 5.0), "f.tsv", 2) == number


@pytest.mark.parametrize("value", ["1_0", "\u0661", "\u00b9", "+1", "1.0"])
def test_label_ids_are_ascii_digits(value) -> None:
    with pytest.raises(DataError, match=r"f.tsv:7: unknown label"):
        parse_label(value, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"], "f.tsv", 7)
    assert parse_label("1", ["a", "b"], "f.tsv", 7) == 1 and parse_label("b", ["a", "b"], "f.tsv", 7) == 1

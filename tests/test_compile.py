"""`--torch-compile`: training through torch.compile gives the eager run's adapter; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roberta_lora.cli.main import main
from roberta_lora.errors import ConfigError
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import train

from fixtures_glue import write_glue_fixture


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    write_glue_fixture(root, "sst2", n_train=24, n_dev=10)
    return root


def _config(model_dir: Path, data_dir: Path, run_dir: Path, **overrides) -> TrainConfig:
    values = dict(task="sst2", model=str(model_dir), data_dir=str(data_dir), output_dir=str(run_dir), epochs=1,
                  batch_size=8, eval_batch_size=8, cache_dir=str(run_dir.parent / "cache"), seed=3)
    return TrainConfig(**{**values, **overrides})


@pytest.mark.slow
def test_compiled_training_gives_the_eager_adapter(tiny_model_dir, glue_dir, tmp_path) -> None:
    # aot_eager traces the model with dynamo and AOTAutograd (what inductor consumes) but runs the
    # traced ATen ops as they are, so it checks the compiled model's wiring without a C++ build.
    from torch._dynamo.utils import counters

    eager = train(_config(tiny_model_dir, glue_dir, tmp_path / "eager"), progress=False)
    counters.clear()
    compiled = train(_config(tiny_model_dir, glue_dir, tmp_path / "compiled", torch_compile=True,
                             torch_compile_backend="aot_eager"), progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # the model really went through torch.compile
    eager_tensors = load_file(eager.run_dir / "adapter/adapter.safetensors")
    compiled_tensors = load_file(compiled.run_dir / "adapter/adapter.safetensors")
    assert sorted(compiled_tensors) == sorted(eager_tensors)  # no "_orig_mod." in the saved names
    for name, tensor in eager_tensors.items():
        torch.testing.assert_close(compiled_tensors[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    assert compiled.metrics == pytest.approx(eager.metrics, abs=1e-6)
    assert json.loads((compiled.run_dir / "config.json").read_text())["torch_compile"] is True
    reloaded = LoraWrapperRoberta.from_adapter(compiled.run_dir / "adapter")
    assert not any("_orig_mod" in name for name in reloaded.trainable_state_dict())


def test_missing_cpu_compiler_is_a_clear_error_before_any_output(tiny_model_dir, glue_dir, tmp_path,
                                                                 monkeypatch) -> None:
    monkeypatch.setattr("roberta_lora.runtime.shutil.which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="C\\+\\+ compiler.*without --torch-compile"):
        train(_config(tiny_model_dir, glue_dir, run_dir, torch_compile=True), progress=False)
    assert not run_dir.exists()


def test_compile_flags_on_the_cli(tiny_model_dir, glue_dir, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("roberta_lora.runtime.shutil.which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["train", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(glue_dir),
            "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--torch-compile"]
    assert main(argv) == 2
    assert "needs a C++ compiler" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--torch-compile-backend", "tvm"])
    assert "invalid choice: 'tvm'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="torch_compile_backend='tvm'"):
        TrainConfig(torch_compile_backend="tvm").validate()

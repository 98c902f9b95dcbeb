"""Run folders belong to their run: refused when they are not one, locked while a run trains, and
`--resume` continues exactly the run that is on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file

from roberta_lora.cli.main import main
from roberta_lora.errors import ConfigError
from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import train
from roberta_lora.training.rundir import LOCK, MARKER

from fixtures_glue import write_glue_fixture


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    write_glue_fixture(root, "sst2", n_train=16, n_dev=8)
    return root


def config(model_dir: Path, data_dir: Path, run_dir: Path, **overrides) -> TrainConfig:
    values = dict(task="sst2", model=str(model_dir), data_dir=str(data_dir), output_dir=str(run_dir), epochs=2,
                  batch_size=8, eval_batch_size=8, max_steps=2, cache_dir=str(run_dir.parent / "cache"))
    return TrainConfig(**{**values, **overrides})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(tiny_model_dir, glue_dir, tmp_path) -> None:
    # A model checkpoint, a folder of notes: train must not write a byte into them, even with --overwrite.
    before = snapshot(tiny_model_dir)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not a roberta-lora run .*config.json.*choose a new --output-dir"):
            train(config(tiny_model_dir, glue_dir, tiny_model_dir, overwrite=overwrite), progress=False)
    assert snapshot(tiny_model_dir) == before
    with pytest.raises(ConfigError, match="output_dir is empty"):
        train(config(tiny_model_dir, glue_dir, tmp_path, output_dir=""), progress=False)


def test_a_finished_run_needs_resume_or_overwrite(tiny_model_dir, glue_dir, tmp_path) -> None:
    run = tmp_path / "run"
    first = train(config(tiny_model_dir, glue_dir, run), progress=False)
    assert (run / MARKER).is_file()
    before = snapshot(run)
    with pytest.raises(ConfigError, match="already holds a training run; pass --resume .* --overwrite"):
        train(config(tiny_model_dir, glue_dir, run), progress=False)
    with pytest.raises(ConfigError, match="has finished .*nothing to resume"):
        train(config(tiny_model_dir, glue_dir, run, resume=True), progress=False)
    assert snapshot(run) == before
    (run / "notes.txt").write_text("a user's notes")  # --overwrite deletes only what the run wrote
    with pytest.raises(ConfigError, match=r"files train did not write \(notes.txt\)"):
        train(config(tiny_model_dir, glue_dir, run, overwrite=True), progress=False)
    assert (run / "notes.txt").read_text() == "a user's notes"
    (run / "notes.txt").unlink()
    again = train(config(tiny_model_dir, glue_dir, run, overwrite=True), progress=False)
    assert again.metrics == first.metrics  # same seed, same run


def test_a_second_process_is_refused_and_a_killed_one_frees_the_folder(tiny_model_dir, glue_dir, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("{}")
    with FileLock(run / LOCK), pytest.raises(ConfigError, match="another roberta-lora process is training into"):
        train(config(tiny_model_dir, glue_dir, run), progress=False)
    # A process that holds the lock and is killed: the kernel frees the lock at once, nothing is stuck.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"FileLock({str(run / LOCK)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    started = time.monotonic()
    assert train(config(tiny_model_dir, glue_dir, run), progress=False).metrics
    assert time.monotonic() - started < 60


def test_resume_alone_continues_the_run_on_disk_and_refuses_changes(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                                    monkeypatch) -> None:
    import roberta_lora.training.loop as loop

    def argv(run: Path) -> list[str]:
        return ["train", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(glue_dir), "--output-dir",
                str(run), "--epochs", "3", "--batch-size", "8", "--lr", "1e-3", "--no-progress",
                "--cache-dir", str(tmp_path / "cache")]

    assert main(argv(tmp_path / "whole")) == 0
    real, calls = loop.evaluate_task, []

    def killed_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("as if killed during epoch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_task", killed_in_epoch_two)
    run = tmp_path / "cut"
    assert main(argv(run)) == 130
    monkeypatch.setattr(loop, "evaluate_task", real)
    config_json = (run / "config.json").read_bytes()
    capsys.readouterr()
    for flags, named in ((["--lr", "5e-4"], "learning_rate (--lr): the run has 0.001, now 0.0005"),
                         (["--epochs", "6"], "epochs (--epochs): the run has 3, now 6"),
                         (["--rank", "4", "--seed", "1"], "lora_rank (--rank): the run has 8, now 4; seed (--seed)"),
                         (["--model", str(glue_dir)], f"model (--model): the run has '{tiny_model_dir}'")):
        assert main(["train", "--resume", "--output-dir", str(run), *flags]) == 2
        error = capsys.readouterr().err
        assert named in error and "Traceback" not in error, error
    assert (run / "config.json").read_bytes() == config_json  # a refused resume rewrote nothing
    # Offline, without --task or any setting: the run continues from its saved configuration.
    assert main(["train", "--resume", "--output-dir", str(run), "--no-progress", "--num-workers", "0"]) == 0
    resumed, whole = load_file(run / "adapter/adapter.safetensors"), load_file(tmp_path / "whole/adapter/adapter.safetensors")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert (run / "config.json").read_bytes() == config_json


def test_relative_model_paths_are_stored_absolute(tiny_model_dir, glue_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tiny_model_dir.parent)
    result = train(config(Path(tiny_model_dir.name), glue_dir, tmp_path / "run"), progress=False)
    saved = json.loads((result.run_dir / "adapter/adapter_config.json").read_text())["base_model"]
    assert saved == str(tiny_model_dir.resolve())
    monkeypatch.chdir(tmp_path)  # the adapter loads from anywhere
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    assert LoraWrapperRoberta.from_adapter(result.run_dir / "adapter").adapter_config.task == "sst2"

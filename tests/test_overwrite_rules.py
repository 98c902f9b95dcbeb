"""`--overwrite` deletes only what the run wrote, and a run is never started inside another run.

Most cases build a run folder by hand (claim it, write what a finished run writes) and call the
checks of `training.rundir` directly; one runs `train` end to end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from roberta_lora.errors import ConfigError
from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import train
from roberta_lora.training.rundir import (
    MARKER,
    RUN_OUTPUTS,
    check_run_folder,
    claim_run_folder,
    foreign_entries,
    record_written,
)

from fixtures_glue import write_glue_fixture

# What a finished run holds (relative path -> content).
FINISHED_RUN = {
    "config.json": json.dumps({"task": "sst2", "resolved": {"total_steps": 2}}),
    "metrics.jsonl": '{"epoch": 1}\n',
    "train.log": "epoch 1\n",
    "curves.png": "png",
    "best/adapter.safetensors": "tensors", "best/adapter_config.json": "{}", "best/README.md": "# card\n",
    "adapter/adapter.safetensors": "tensors", "adapter/adapter_config.json": "{}", "adapter/README.md": "# card\n",
    "checkpoint/training_state.pt": "state",
    "checkpoint/adapter/adapter.safetensors": "tensors", "checkpoint/adapter/adapter_config.json": "{}",
    "eval/validation/predictions.jsonl": "{}\n",
    # An earlier checkpoint kept by --save-total-limit.
    "checkpoint-4/training_state.pt": "state", "checkpoint-4/adapter/adapter.safetensors": "tensors",
}


def write(folder: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def finished_run(folder: Path, marker: bool = True) -> Path:
    """A run folder as `train` leaves it (the marker from `claim_run_folder`, or none: an earlier version's)."""
    if marker:
        claim_run_folder(folder, overwrite=False).release()
    write(folder, FINISHED_RUN)
    return folder


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_deletes_exactly_the_runs_own_files(tmp_path) -> None:
    run = finished_run(tmp_path / "run")
    (run / ".config.json.a1b2c3d4.tmp.json").write_text("{")  # a killed atomic write's leftovers are the run's
    (run / ".best.new-0123abcd").mkdir()
    (run / ".checkpoint-8.tmp").mkdir()
    assert foreign_entries(run) == ([], [])
    check_run_folder(run, resume=False, overwrite=True)
    claim_run_folder(run, overwrite=True).release()
    assert sorted(os.listdir(run)) == sorted([MARKER, ".roberta-lora.lock"])
    assert json.loads((run / MARKER).read_text())["written"] == []  # the new run starts its own list


@pytest.mark.parametrize("user_file", ["notes.md", "adapter/my-eval.txt", "best/notes.md",
                                       "checkpoint/adapter/notes.md", "checkpoint/keep.txt",
                                       "checkpoint-4/adapter/notes.md", ".notes.md.swp"])
def test_overwrite_refuses_a_file_train_did_not_write_and_names_it(tmp_path, user_file) -> None:
    run = finished_run(tmp_path / "run")
    write(run, {user_file: "mine"})
    before = files_under(run)
    for step in (lambda: check_run_folder(run, resume=False, overwrite=True),
                 lambda: claim_run_folder(run, overwrite=True)):  # a file added after the check: refused still
        with pytest.raises(ConfigError, match=rf"--overwrite deletes only the files the run in {run} wrote.*"
                                              rf"did not write \({user_file}\).*move them out"):
            step()
    assert files_under(run) == before
    # Without --overwrite the usual refusal stands (pass --resume / --overwrite), nothing is deleted either.
    with pytest.raises(ConfigError, match="already holds a training run"):
        check_run_folder(run, resume=False, overwrite=False)


def test_overwrite_refuses_a_run_folder_anywhere_below(tmp_path) -> None:
    run = finished_run(tmp_path / "run")
    finished_run(run / "nested")  # accepted by earlier versions: train --output-dir run/nested
    finished_run(run / "eval" / "deep", marker=False)  # an earlier version's run (config.json only), inside eval/
    assert foreign_entries(run) == ([], ["eval/deep", "nested"])
    before = files_under(run)
    with pytest.raises(ConfigError, match=r"other run folders \(eval/deep, nested\)"):
        check_run_folder(run, resume=False, overwrite=True)
    with pytest.raises(ConfigError, match="other run folders"):
        claim_run_folder(run, overwrite=True)
    assert files_under(run) == before


def test_recorded_entries_are_the_runs_own_and_unrecorded_ones_are_not(tmp_path) -> None:
    run = finished_run(tmp_path / "run")
    write(run, {"profile/trace.json": "{}"})
    assert foreign_entries(run) == (["profile/"], [])
    assert record_written(run, "profile/trace.json") == run / "profile/trace.json"
    record_written(run, "profile")  # idempotent
    assert json.loads((run / MARKER).read_text())["written"] == ["profile"]
    assert foreign_entries(run) == ([], [])
    claim_run_folder(run, overwrite=True).release()
    assert not (run / "profile").exists()


def test_every_run_output_counts_without_being_recorded(tmp_path) -> None:
    # Runs of earlier versions (no marker, or a marker without the list) and a loop that writes a known
    # entry without recording it: RUN_OUTPUTS are the run's all the same.
    assert set(RUN_OUTPUTS) >= {"config.json", "metrics.jsonl", "train.log", "curves.png", "best", "adapter",
                                "checkpoint", "eval"}
    legacy = finished_run(tmp_path / "legacy", marker=False)
    check_run_folder(legacy, resume=False, overwrite=True)
    claim_run_folder(legacy, overwrite=True).release()
    assert not set(os.listdir(legacy)) & set(RUN_OUTPUTS)
    broken = finished_run(tmp_path / "broken")
    (broken / MARKER).write_text("{not json")
    assert foreign_entries(broken) == ([], [])


def test_the_tensorboard_folder_is_the_runs_own(tmp_path) -> None:
    run = finished_run(tmp_path / "run")
    write(run, {"run/events.out.tfevents.1700000000.host.1.0": "events"})  # accelerate: <run dir>/<run name>/
    assert foreign_entries(run) == ([], [])
    write(run, {"run/notes.md": "mine"})
    assert foreign_entries(run) == (["run/"], [])


@pytest.mark.parametrize("inside", ["nested", "eval/nested", "a/b/c"])
def test_a_new_run_inside_a_run_folder_is_refused(tmp_path, inside) -> None:
    run = finished_run(tmp_path / "run")
    target = run / inside
    for resume, overwrite in ((False, False), (False, True), (True, False)):
        with pytest.raises(ConfigError, match=rf"--output-dir {target} is inside the run folder {run}.*"
                                              rf"choose a folder outside"):
            check_run_folder(target, resume, overwrite)
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    with pytest.raises(ConfigError, match="is inside the run folder"):
        check_run_folder(tmp_path / "link" / "nested", resume=False, overwrite=False)
    legacy = finished_run(tmp_path / "legacy", marker=False)
    with pytest.raises(ConfigError, match=f"inside the run folder {legacy}"):
        check_run_folder(legacy / "x", resume=False, overwrite=False)


def test_a_nested_run_made_by_an_earlier_version_can_still_be_resumed(tmp_path) -> None:
    run = finished_run(tmp_path / "run")
    nested = run / "nested"
    claim_run_folder(nested, overwrite=False).release()
    write(nested, {"checkpoint/training_state.pt": "state", "config.json": "{}"})
    check_run_folder(nested, resume=True, overwrite=False)  # it is a run folder itself: no refusal


def test_train_keeps_a_users_notes_and_refuses_a_run_inside_its_run(tiny_model_dir, tmp_path) -> None:
    data = tmp_path / "glue"
    write_glue_fixture(data, "sst2", n_train=16, n_dev=8)

    def config(run: Path, **overrides) -> TrainConfig:
        return TrainConfig(task="sst2", model=str(tiny_model_dir), data_dir=str(data), output_dir=str(run),
                           epochs=1, batch_size=8, eval_batch_size=8, max_steps=1,
                           cache_dir=str(tmp_path / "cache"), **overrides)

    run = tmp_path / "run"
    train(config(run), progress=False)
    assert foreign_entries(run) == ([], []), "everything a finished run wrote is the run's own"
    with pytest.raises(ConfigError, match=f"--output-dir {run / 'nested'} is inside the run folder {run}"):
        train(config(run / "nested"), progress=False)
    (run / "notes.md").write_text("lr 5e-4 was best\n")
    (run / "adapter" / "eval-on-imdb.txt").write_text("0.91\n")
    before = files_under(run)
    with pytest.raises(ConfigError, match=r"did not write \(adapter/eval-on-imdb.txt, notes.md\)"):
        train(config(run, overwrite=True), progress=False)
    assert files_under(run) == before
    (run / "notes.md").rename(tmp_path / "notes.md")
    (run / "adapter" / "eval-on-imdb.txt").unlink()
    train(config(run, overwrite=True), progress=False)
    assert (run / "adapter" / "adapter.safetensors").is_file()

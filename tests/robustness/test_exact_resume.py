"""Exact resume from a checkpoint in the middle of an epoch: a real `roberta-lora train` process is
SIGKILLed right after it commits a mid-epoch checkpoint, `--resume` finishes the run, and the adapters,
the best adapter, every metrics.jsonl record and the predictions equal those of the same run
uninterrupted, bit for bit (CPU). LoRA dropout is on, gradient accumulation is 2 and the data order is
shuffled per epoch, so a resume that lost the RNG state, the data position or the optimizer would differ.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .helpers import ForkServer
from fixtures_glue import write_glue_fixture

COMPARED = ["adapter/adapter.safetensors", "best/adapter.safetensors", "checkpoint/adapter/adapter.safetensors"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("exact-resume")
    write_glue_fixture(root / "data", "sst2", n_train=60, n_dev=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    server = ForkServer(env)

    def argv(run: Path, *extra: str) -> list[str]:
        # 60 rows, batch 8: 8 micro-batches per epoch (the last one short), 4 optimizer steps with --grad-accum 2
        return ["train", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(root / "data"),
                "--output-dir", str(run), "--epochs", "3", "--batch-size", "8", "--grad-accum", "2", "--lr", "5e-3",
                "--dropout", "0.2", "--save-steps", "3", "--no-progress", "--cache-dir", str(root / "cache"), *extra]

    reference = root / "reference"
    assert server.wait(server.start(argv(reference), root / "reference.log")) == 0, (root / "reference.log").read_text()
    yield server, argv, reference
    server.close()


def assert_same(run: Path, reference: Path) -> None:
    for name in COMPARED:
        ours, theirs = load_file(run / name), load_file(reference / name)
        assert ours.keys() == theirs.keys()
        different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
        assert not different, f"{name}: {different[:5]} differ from the uninterrupted run"

    def records(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_seconds"}
                for line in path.read_text().splitlines()]

    assert records(run / "metrics.jsonl") == records(reference / "metrics.jsonl")
    predictions = "eval/validation/predictions.jsonl"
    assert (run / predictions).read_text() == (reference / predictions).read_text()


@pytest.mark.parametrize("occurrence", [1, 2, 3], ids=["step-3-epoch-1", "step-6-epoch-2", "step-9-epoch-3"])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(setup, tmp_path, occurrence):
    server, argv, reference = setup
    run = tmp_path / "run"
    state = run / "checkpoint" / "training_state.pt"
    code = server.wait(server.start(argv(run), tmp_path / "run.log", kill_at=(state, occurrence, "after")))
    assert code == -signal.SIGKILL, (tmp_path / "run.log").read_text()[-2000:]
    saved = torch.load(state, weights_only=True)
    assert saved["global_step"] == 3 * occurrence and 0 < saved["batches"] < 8  # the kill was mid-epoch
    assert not (run / "adapter").exists()
    assert server.wait(server.start(argv(run, "--resume"), tmp_path / "run.log")) == 0, \
        (tmp_path / "run.log").read_text()[-2000:]
    assert_same(run, reference)


def test_resume_takes_only_the_settings_that_cannot_change_the_result(setup, tmp_path):
    server, argv, _ = setup
    run = tmp_path / "run"
    state = run / "checkpoint" / "training_state.pt"
    assert server.wait(server.start(argv(run), tmp_path / "run.log", kill_at=(state, 1, "after"))) == -signal.SIGKILL
    log = tmp_path / "resume.log"
    code = server.wait(server.start(argv(run, "--resume", "--eval-steps", "2"), log))
    assert code == 2 and "eval_steps (--eval-steps): the run has None, now 2" in log.read_text()
    assert server.wait(server.start(argv(run, "--resume", "--save-steps", "5", "--save-total-limit", "2"),
                                    tmp_path / "run.log")) == 0

"""SIGKILL a training run at random points, resume it, and get exactly what an uninterrupted run gives.

Training runs as the real command line (`roberta-lora train ...`) in processes forked from one
server that imported the toolkit once (helpers.ForkServer), so a dozen short runs fit in
seconds. A seeded plan mixes two kinds of kills:

* timer: SIGKILL after a random delay anywhere in the run (start-up, epochs, evaluation, file
  writes, the final save);
* commit: the process SIGKILLs itself just before or just after it renames a chosen output
  file into place, i.e. between two file writes.

After every kill each output file must parse (nothing half-written is ever visible; hidden
`.<name>.*.tmp` files may stay and are counted), and the next attempt resumes from the checkpoint
(or starts afresh when no epoch had finished). The finished run must equal the uninterrupted
one: the same adapter tensors (torch.equal), best adapter, metrics and predictions.

The checkpoint's commit point is one file (training_state.pt holds tensors, optimizer, scheduler
and RNG state); kills between the checkpoint's writes are tested explicitly below. The old
deferral of timer kills around the checkpoint (AVOID_KNOWN_CHECKPOINT_BUG) is switched off.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .helpers import ForkServer, check_run_files
from fixtures_glue import write_glue_fixture

SEED = 11
KILLS = 8
EPOCHS = 3
AVOID_KNOWN_CHECKPOINT_BUG = False
# Files a run commits (relative to the run folder) and when: every epoch, only while the best
# metric improves (always in epoch 1), or once at the end. Killing just before or just after
# these renames is safe today; inside the checkpoint's three writes is the known bug.
PER_EPOCH = ["metrics.jsonl", "curves.png", "checkpoint/training_state.pt"]
# An adapter folder (tensors, config, README.md card) is committed as one unit: its folder is the path.
FIRST_EPOCH = ["best"]
AT_THE_END = ["adapter", "eval/validation/predictions.jsonl"]
COMPARED = ["adapter/adapter.safetensors", "best/adapter.safetensors", "checkpoint/adapter/adapter.safetensors"]


@dataclass
class Trainer:
    server: ForkServer
    model_dir: Path
    data_dir: Path
    cache_dir: Path
    reference: Path
    seconds: float = 0.0  # an uninterrupted warm run, start to exit
    checkpoints: tuple[float, ...] = ()  # when each epoch's checkpoint was complete, in seconds from the start

    def argv(self, run: Path, resume: bool) -> list[str]:
        return ["train", "--task", "sst2", "--model", str(self.model_dir), "--data-dir", str(self.data_dir),
                "--output-dir", str(run), "--epochs", str(EPOCHS), "--batch-size", "8", "--no-progress",
                "--cache-dir", str(self.cache_dir)] + (["--resume"] if resume else [])

    def start(self, run: Path, kill_at: tuple[Path, int, str] | None = None) -> int:
        resume = (run / "checkpoint" / "training_state.pt").is_file()
        return self.server.start(self.argv(run, resume), run.parent / f"{run.name}.log", kill_at=kill_at)


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted")
    write_glue_fixture(root / "data", "sst2", n_train=64, n_dev=16)
    # One thread: a tiny model runs ~20x faster than with two threads competing on a busy 2-core machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    server = ForkServer(env)
    trainer = Trainer(server, tiny_model_dir, root / "data", root / "cache", root / "reference")
    assert server.wait(trainer.start(trainer.reference)) == 0, (root / "reference.log").read_text()[-3000:]
    # A second, warm run (the first one also filled the tokenized-data cache) gives the timeline.
    trainer.seconds, trainer.checkpoints = timeline(trainer, root / "warm")
    yield trainer
    server.close()


def timeline(trainer: Trainer, run: Path) -> tuple[float, tuple[float, ...]]:
    """Run without kills, noting when each checkpoint is complete (training_state.pt replaced)."""
    state, seen, times = run / "checkpoint" / "training_state.pt", None, []
    started = time.perf_counter()
    pid = trainer.start(run)
    while not (run / "eval" / "validation" / "predictions.jsonl").exists():
        stamp = state.stat().st_mtime_ns if state.exists() else None
        if stamp != seen:
            seen = stamp
            times.append(time.perf_counter() - started)
        time.sleep(0.002)
        assert time.perf_counter() - started < 60, "the uninterrupted run did not finish"
    assert trainer.server.wait(pid) == 0
    return time.perf_counter() - started, tuple(times)


def in_known_bug_window(run: Path) -> bool:
    """True while a checkpoint is half-written: resuming (or restarting) from this state fails or goes wrong."""
    checkpoint = run / "checkpoint"
    state, tensors = checkpoint / "training_state.pt", checkpoint / "adapter" / "adapter.safetensors"
    if not checkpoint.exists():
        return False
    if not state.exists():
        return True
    return tensors.exists() and tensors.stat().st_mtime_ns > state.stat().st_mtime_ns


def kill_now(pid: int, run: Path) -> int:
    """SIGKILL `pid`, deferring (freeze, look, thaw, retry) while it is inside the known-bug window.

    Returns how many milliseconds the kill was deferred.
    """
    for waited in range(10_000):
        os.kill(pid, signal.SIGSTOP)  # a no-op on a process that already exited (a zombie until waited for)
        if not (AVOID_KNOWN_CHECKPOINT_BUG and in_known_bug_window(run)):
            os.kill(pid, signal.SIGKILL)
            return waited
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)
    raise AssertionError(f"{run} stayed inside a checkpoint write for 10 s")


def assert_same_as_reference(run: Path, reference: Path) -> None:
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


def finish(trainer: Trainer, run: Path, attempts: int = 2) -> list[int]:
    """Resume (or restart) without kills until the run exits; returns the exit codes."""
    codes = []
    for _ in range(attempts):
        codes.append(trainer.server.wait(trainer.start(run)))
        if codes[-1] == 0:
            break
    return codes


def resumes_at(trainer: Trainer, done: int) -> float:
    """Where on the uninterrupted timeline a run resumed after `done` epochs starts (start-up included)."""
    if done == 0:
        return 0.0
    epoch = (trainer.checkpoints[-1] - trainer.checkpoints[0]) / max(len(trainer.checkpoints) - 1, 1)
    startup = trainer.checkpoints[0] - epoch
    return trainer.checkpoints[min(done, len(trainer.checkpoints)) - 1] - startup


def epochs_done(run: Path) -> int:
    state = run / "checkpoint" / "training_state.pt"
    return torch.load(state, weights_only=True)["epoch"] if state.is_file() else 0


def kill_point(rng: random.Random, done: int, epoch: int) -> tuple[str, int, str]:
    """A (file, occurrence, before/after) that the next attempt reaches, resuming after `done` epochs,
    chosen in `epoch` (0-based) of the run, or in the final save when `epoch` == EPOCHS."""
    if epoch >= EPOCHS:
        name, occurrence = rng.choice(AT_THE_END), 1
    else:
        epoch = max(epoch, done)  # that part of the timeline is already behind this attempt
        name = rng.choice(PER_EPOCH + (FIRST_EPOCH if epoch == 0 else []))
        occurrence = epoch - done + 1
    when = "after" if name == "checkpoint/training_state.pt" else rng.choice(["before", "after"])
    return name, occurrence, when


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_result(trainer, tmp_path, capsys) -> None:
    rng = random.Random(SEED)
    run = tmp_path / "run"
    log, leftovers, deferred_ms = [], set(), 0
    for number in range(KILLS):
        done = epochs_done(run)
        # Kill k aims at the k-th slice of an uninterrupted run's timeline, so the kills move through the run.
        target = (number + rng.random()) / KILLS * trainer.seconds
        if number % 2 == 0:  # timer
            delay = target - position if target > (position := resumes_at(trainer, done)) else rng.uniform(0.02, 0.3)
            pid = trainer.start(run)
            time.sleep(delay)
            deferred_ms += kill_now(pid, run)
            what = f"after {delay:.2f} s"
        else:
            name, occurrence, when = kill_point(rng, done, sum(c <= target for c in trainer.checkpoints))
            pid = trainer.start(run, kill_at=(run / name, occurrence, when))
            what = f"{when} committing {name} (#{occurrence})"
        code = trainer.server.wait(pid)
        assert code in (0, -signal.SIGKILL), f"{what}: exit {code}\n" + (tmp_path / "run.log").read_text()[-3000:]
        leftovers |= set(check_run_files(run)) if run.exists() else set()
        log.append(f"{'fresh ' if done == 0 else f'resume after epoch {done}'}: {'killed' if code else 'finished'} {what}")
        if code == 0:  # a timer that came after the end (the cores got faster than the timeline): nothing is left
            break      # to interrupt, and a finished run is not resumed
    codes = finish(trainer, run) if code != 0 else [0]
    assert codes[-1] == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert_same_as_reference(run, trainer.reference)
    check_run_files(run)
    with capsys.disabled():
        killed = sum(": killed" in line for line in log)
        print(f"\ninterrupted training: {killed} SIGKILLs in {len(log)} attempts, then {len(codes)} to finish; final "
              f"adapter, best adapter, metrics and predictions equal the uninterrupted run's; kills deferred out "
              f"of the known checkpoint window: {deferred_ms} ms in all; hidden temp files left: {len(leftovers)}; "
              f"uninterrupted run {trainer.seconds:.1f} s")
        for line in log:
            print("  " + line)
    assert killed >= KILLS // 2, "the kills at a commit always land; most timed ones should too"


@pytest.mark.slow
@pytest.mark.parametrize("name, occurrence, when", [
    ("checkpoint/adapter", 2, "before"),
    ("checkpoint/adapter", 2, "after"),
    ("checkpoint/adapter", 1, "before"),
], ids=["adapter-not-yet-swapped", "adapter-committed-state-not", "first-checkpoint-begun"])
def test_a_kill_inside_the_checkpoint_write_can_be_resumed(trainer, tmp_path, name, occurrence, when) -> None:
    run = tmp_path / "run"
    assert trainer.server.wait(trainer.start(run, kill_at=(run / name, occurrence, when))) == -signal.SIGKILL
    check_run_files(run)
    assert finish(trainer, run)[-1] == 0, (tmp_path / "run.log").read_text()[-1500:]
    assert_same_as_reference(run, trainer.reference)

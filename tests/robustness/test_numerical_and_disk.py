"""Numerical trouble (NaN / inf, fp16 overflow) and storage trouble (unwritable folder, disk full).

* A NaN or infinite loss stops training with TrainingDivergedError and a message; the checkpoint
  of the last good epoch stays intact, loadable, and training resumes from it.
* Non-finite weights are never saved: an adapter or checkpoint write refuses them and keeps the
  files already there.
* fp16 needs CUDA: on CPU it is a ConfigError before any work; with CUDA, the gradient scaler
  skips an overflowing step (that test runs only where a GPU is present).
* An output folder that cannot be written is a ConfigError before data or model are loaded.
* A write that fails half-way (disk full, I/O error, failed rename) leaves no partial file and
  the previous version intact, for every file a run writes.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import roberta_lora.fileio as fileio
import roberta_lora.training.loop as train_module
from roberta_lora.cli.main import main
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.fileio import atomic_write_text
from roberta_lora.model.adapter_files import save_adapter_files
from roberta_lora.model.config import AdapterConfig
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.training.checkpoints import save_training_state
from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import TrainingDivergedError, train
from roberta_lora.training.run_files import RunHistory, plot_curves, write_metrics_jsonl, write_model_card

from .helpers import check_run_files
from fixtures_glue import write_glue_fixture

STEPS_PER_EPOCH = 4  # 32 training rows, batch 8


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train many times faster on one thread when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    write_glue_fixture(root, "sst2", n_train=32, n_dev=8)
    return root


@pytest.fixture()
def config(tiny_model_dir, data_dir, tmp_path) -> TrainConfig:
    return TrainConfig(task="sst2", model=str(tiny_model_dir), data_dir=str(data_dir), output_dir=str(tmp_path / "run"),
                       epochs=2, batch_size=8, eval_batch_size=8, cache_dir=str(data_dir / "cache"))


def after_checkpoint(monkeypatch, epoch: int, action: Callable[[LoraWrapperRoberta], None], before: bool = False) -> None:
    """Run `action(model)` right after (or just before) the checkpoint of `epoch` is written."""
    real = train_module.save_checkpoint

    def wrapped(run_dir, model, optimizer, scheduler, position, *args, **kwargs):
        epoch_done = position["epoch"] if position["batches"] == 0 else None  # an epoch-end checkpoint
        if before and epoch_done == epoch:
            action(model)
        real(run_dir, model, optimizer, scheduler, position, *args, **kwargs)
        if not before and epoch_done == epoch:
            action(model)

    monkeypatch.setattr(train_module, "save_checkpoint", wrapped)


def checkpoint_epoch(run: Path) -> int:
    return torch.load(run / "checkpoint" / "training_state.pt", weights_only=True)["epoch"]


def poison(model: LoraWrapperRoberta) -> None:
    with torch.no_grad():
        model.classifier.out_proj.weight.fill_(float("nan"))


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(config, monkeypatch) -> None:
    run = Path(config.output_dir)
    good: dict[str, torch.Tensor] = {}
    after_checkpoint(monkeypatch, 1, lambda m: (good.update({n: t.clone() for n, t in m.adapter_state_dict().items()}),
                                                poison(m)))
    with pytest.raises(TrainingDivergedError, match=rf"loss became nan at step {STEPS_PER_EPOCH + 1} \(epoch 2\)") as error:
        train(config, progress=False)
    assert str(run / "checkpoint") in str(error.value) and "--lr" in str(error.value)
    check_run_files(run)
    assert checkpoint_epoch(run) == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    kept = LoraWrapperRoberta.from_adapter(run / "checkpoint" / "adapter")
    assert all(torch.equal(good[n], t) for n, t in kept.adapter_state_dict().items())
    monkeypatch.undo()
    result = train(replace(config, resume=True), progress=False)  # the kept checkpoint is a working one
    assert result.best_epoch >= 1 and checkpoint_epoch(run) == 2
    assert all(torch.isfinite(t).all() for t in LoraWrapperRoberta.from_adapter(run / "adapter").adapter_state_dict().values())


def test_weights_that_turned_non_finite_are_never_saved(config, monkeypatch) -> None:
    """A step can overflow the weights while its loss was still finite; the checkpoint must not take them."""
    run = Path(config.output_dir)
    after_checkpoint(monkeypatch, 2, poison, before=True)
    with pytest.raises(AdapterError, match="NaN or infinite values .*did training diverge"):
        train(config, progress=False)
    check_run_files(run)
    assert checkpoint_epoch(run) == 1
    LoraWrapperRoberta.from_adapter(run / "checkpoint" / "adapter")  # still the good epoch-1 adapter


def test_a_huge_learning_rate_diverges_with_one_clear_line(config, capsys) -> None:
    argv = ["train", "--task", "sst2", "--model", config.model, "--data-dir", config.data_dir, "--output-dir",
            config.output_dir, "--epochs", "2", "--batch-size", "8", "--no-progress", "--cache-dir", config.cache_dir,
            "--lr", "1e30"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "roberta-lora train: error: loss became" in err and "Lower --lr" in err and "Traceback" not in err
    assert not (Path(config.output_dir) / "adapter").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal; the CUDA test below covers fp16")
def test_fp16_on_cpu_is_a_config_error_before_any_work(config, monkeypatch) -> None:
    monkeypatch.setattr(train_module, "load_task_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(ConfigError, match="--mixed-precision fp16 needs a CUDA GPU; on CPU use --mixed-precision bf16"):
        train(replace(config, mixed_precision="fp16"), progress=False)
    assert not (Path(config.output_dir) / "checkpoint").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 mixed precision needs CUDA")
def test_fp16_scaler_skips_an_overflowing_step(tiny_model_dir) -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # train() calls above fixed mixed_precision="no"
    accelerator = Accelerator(mixed_precision="fp16")
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    ids = torch.randint(3, 300, (4, 12), generator=torch.Generator().manual_seed(0)).to(accelerator.device)
    labels = torch.tensor([0, 1, 0, 1], device=accelerator.device)

    def trainable() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    before, scale = trainable(), accelerator.scaler.get_scale()
    accelerator.backward(model(ids, labels=labels).loss * 1e36)  # the scaled gradients overflow to inf
    optimizer.step()
    optimizer.zero_grad()
    assert optimizer.step_was_skipped and accelerator.scaler.get_scale() < scale
    assert all(torch.equal(before[n], t) for n, t in trainable().items()), "an overflowing step changed weights"
    accelerator.backward(model(ids, labels=labels).loss)
    optimizer.step()
    assert not optimizer.step_was_skipped and any(not torch.equal(before[n], t) for n, t in trainable().items())
    AcceleratorState._reset_state(reset_partial_state=True)


# ----------------------------------------------------------------------------- unwritable output
def refuse_writes_under(monkeypatch, folder: Path, code: int) -> None:
    """Writes of files under `folder` fail with `code` (what chmod 0o500 or a full disk would do for a non-root user)."""
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if str(self).startswith(str(folder)):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("problem", ["a-file-in-the-way", "read-only", "disk-full"])
def test_an_unwritable_output_folder_fails_before_training(config, monkeypatch, tmp_path, problem) -> None:
    run = Path(config.output_dir)
    if problem == "a-file-in-the-way":
        (tmp_path / "file").write_text("not a folder")
        run = tmp_path / "file" / "run"
    elif problem == "read-only":
        run.parent.chmod(0o500)
        if os.geteuid() == 0:  # root ignores the mode bits: fail the writes as the kernel would for a user
            refuse_writes_under(monkeypatch, run, errno.EACCES)
    else:
        refuse_writes_under(monkeypatch, run, errno.ENOSPC)
    monkeypatch.setattr(train_module, "load_task_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    try:
        with pytest.raises(ConfigError, match=f"cannot write to the output folder {run} .*choose a writable --output-dir"):
            train(replace(config, output_dir=str(run)), progress=False)
    finally:
        run.parent.chmod(0o700)
    assert not run.exists() or not any(run.iterdir()), "nothing is left behind"


# ----------------------------------------------------------------------------- failing writes
def tiny_adapter(tiny_model_dir: Path) -> tuple[dict[str, torch.Tensor], AdapterConfig]:
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0)
    return {n: t.clone() for n, t in model.adapter_state_dict().items()}, model.adapter_config


def writers(tiny_model_dir: Path) -> dict[str, Callable[[Path, int], None]]:
    """Each writer a run uses, as (folder, version) -> write version `version` of its file(s)."""
    tensors, config = tiny_adapter(tiny_model_dir)

    def history(version: int) -> RunHistory:
        return RunHistory(steps=[0, 1], losses=[0.7, 0.6 - version / 10], learning_rates=[1e-4, 2e-4],
                          epochs=[{"epoch": e, "eval_accuracy": 0.5} for e in range(1, version + 2)])

    return {
        "adapter files": lambda d, v: save_adapter_files(d, {n: t + v for n, t in tensors.items()}, config),
        "training_state.pt": lambda d, v: save_training_state(d, {"epoch": v, "weights": torch.full((64,), float(v))}),
        "metrics.jsonl": lambda d, v: write_metrics_jsonl(d, history(v)),
        "curves.png": lambda d, v: plot_curves(d / "curves.png", history(v), "accuracy"),
        "README.md card": lambda d, v: write_model_card(d, task="sst2", description=f"v{v}", base_model="tiny",
                                                        metrics={"accuracy": 0.5}, config={}, trainable=1, total=2,
                                                        epoch=v),
        "config.json": lambda d, v: atomic_write_text(d / "config.json", json.dumps({"version": v})),
    }


def inject(monkeypatch, failure: str, folder: Path) -> None:
    """Make the atomic writes under `folder` fail the way a full disk or a broken device does."""
    def ours(path) -> bool:  # the folder, or the hidden sibling an adapter folder is built in before the swap
        return str(path).startswith((str(folder), str(folder.parent / f".{folder.name}.")))

    if failure == "disk full mid-write":  # the temporary file is cut short, then the write fails
        real_chmod = os.chmod

        def chmod(path, mode, *args, **kwargs):
            if ours(path):
                os.truncate(path, os.path.getsize(path) // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real_chmod(path, mode, *args, **kwargs)

        monkeypatch.setattr(fileio.os, "chmod", chmod)
    elif failure == "fsync fails":
        real_fsync = os.fsync
        monkeypatch.setattr(fileio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
                            if ours(os.readlink(f"/proc/self/fd/{fd}")) else real_fsync(fd))
    else:  # the rename
        real_replace = os.replace
        monkeypatch.setattr(fileio.os, "replace", lambda src, dst, *a, **k: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device")) if ours(dst) else real_replace(src, dst, *a, **k))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


FAILURES = ["disk full mid-write", "fsync fails", "rename fails"]


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_write_leaves_no_partial_file_and_keeps_the_previous_one(tiny_model_dir, tmp_path, monkeypatch,
                                                                          failure) -> None:
    for name, write in writers(tiny_model_dir).items():
        folder = tmp_path / name.replace(" ", "-")
        write(folder, 1)
        before = snapshot(folder)
        with monkeypatch.context() as patch:
            inject(patch, failure, folder)
            with pytest.raises(OSError) as error:
                write(folder, 2)
        assert error.value.errno in (errno.ENOSPC, errno.EIO), name
        assert snapshot(folder) == before, f"{name}: a partial or temporary file is left, or the old one changed"
        write(folder, 2)  # and the folder is not wedged
        assert snapshot(folder) != before, name


def test_disk_full_during_training_keeps_the_previous_epoch_and_resumes(config, monkeypatch) -> None:
    run = Path(config.output_dir)
    real_replace, commits = os.replace, []

    def replace_or_fail(src, dst, *args, **kwargs):
        if str(dst) == str(run / "metrics.jsonl"):
            commits.append(dst)
            if len(commits) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "replace", replace_or_fail)
    with pytest.raises(OSError, match="No space left"):
        train(config, progress=False)
    assert check_run_files(run) == [], "the failed write's temporary file is removed"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert checkpoint_epoch(run) == 1
    monkeypatch.undo()
    train(replace(config, resume=True), progress=False)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]

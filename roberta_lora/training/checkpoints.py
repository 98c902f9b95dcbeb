"""Checkpoints: everything an exact resume needs at any optimizer step, and resuming from it."""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roberta_lora.errors import ConfigError, first_line
from roberta_lora.fileio import atomic_write_with
from roberta_lora.model.adapter_files import check_tensors
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.training.run_files import RunHistory

logger = logging.getLogger(__name__)

STATE_NAME = "training_state.pt"


def save_checkpoint(run_dir: Path, model: LoraWrapperRoberta, optimizer: Any, scheduler: Any,
                    position: dict[str, int], best: dict[str, Any], history: RunHistory, scaler: Any = None,
                    keep: int | None = None, previous_step: int | None = None) -> None:
    """Everything an exact resume needs, at any optimizer step, in ONE atomically written file.

    training_state.pt holds the trained tensors, optimizer, scheduler, GradScaler, every RNG state and
    the position in the data (`position`: "epoch" to continue in, "batches" of it already consumed,
    "global_step", "since_best" evaluations without improvement), so a kill at any moment leaves
    either the previous checkpoint or this one, never a mix. checkpoint/adapter/ is a readable copy
    (written first); resuming never reads it.

    Args:
        keep: checkpoints kept in all (`--save-total-limit`); the one replaced here is first kept as
            checkpoint-<previous_step>/ (hard links: no copy, and the new checkpoint never writes into it)
            and the oldest such folders beyond `keep - 1` are removed. None or 1: only checkpoint/.
    """
    checkpoint = run_dir / "checkpoint"
    if keep is not None and keep > 1 and previous_step is not None and (checkpoint / STATE_NAME).is_file():
        _archive(checkpoint, run_dir / f"checkpoint-{previous_step}")
        _prune(run_dir, keep - 1)
    model.save_adapter(checkpoint / "adapter")
    save_training_state(checkpoint, {
        **position, "best": best, "history": asdict(history),
        "tensors": {name: t.detach().cpu().clone() for name, t in model.trainable_state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
        "scaler": scaler.state_dict() if scaler is not None else None,
    })


def _archive(checkpoint: Path, target: Path) -> None:
    """checkpoint/ as it is now, kept as `target` with hard links (atomic_write replaces files by rename,
    so the links keep the old contents)."""
    if target.exists():
        return
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            destination = staging / path.relative_to(checkpoint)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, destination)
    staging.rename(target)


def _prune(run_dir: Path, keep: int) -> None:
    """Remove the oldest checkpoint-<step>/ folders beyond `keep`."""
    kept = sorted((int(p.name.split("-", 1)[1]), p) for p in run_dir.glob("checkpoint-*")
                  if p.is_dir() and p.name.split("-", 1)[1].isdigit())
    for _, path in kept[: max(0, len(kept) - keep)]:
        shutil.rmtree(path)


def resume_from_checkpoint(run_dir: Path, state: dict[str, Any], accelerator: Any, model: Any, optimizer: Any,
                           scheduler: Any) -> dict[str, Any]:
    """Put the checkpoint's tensors, optimizer, scheduler and GradScaler (from `load_training_state`) back;
    returns the position and bookkeeping. The RNG state is NOT restored here: the loop restores it
    (`restore_rng_state(state["rng"])`) once it has skipped to the checkpoint's place in the data, so
    dropout continues exactly where the interrupted run was."""
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    live = dict(unwrapped.named_parameters())
    expected = {name: live[name] for name in unwrapped.trainable_state_dict()}
    check_tensors(state["tensors"], expected, str(run_dir / "checkpoint" / STATE_NAME))
    with torch.no_grad():
        for name, tensor in state["tensors"].items():
            live[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    position = {"epoch": int(state["epoch"]), "batches": int(state.get("batches", 0)),
                "global_step": int(state["global_step"]), "since_best": int(state.get("since_best", 0))}
    logger.info("resumed %s at epoch %d, batch %d (step %d)", run_dir, position["epoch"] + 1, position["batches"],
                position["global_step"])
    return {**position, "best": state["best"], "history": RunHistory(**state["history"]), "rng": state["rng"]}


def rng_state() -> dict[str, Any]:
    """Every RNG the loop uses, as tensors and plain lists (loadable with weights_only=True)."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(python_state), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(checkpoint_dir: Path, payload: dict[str, Any]) -> None:
    atomic_write_with(checkpoint_dir / STATE_NAME, lambda tmp: torch.save(payload, tmp))


def load_training_state(checkpoint_dir: Path) -> dict[str, Any]:
    path = checkpoint_dir / STATE_NAME
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} does not exist (the run has no checkpoint to resume from)")
    # weights_only: a checkpoint is data (tensors, numbers, lists); never run pickled code.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"cannot resume: the checkpoint {path} is damaged ({first_line(error, limit=200)}); "
                          "start the run again with --overwrite, or from another --output-dir") from None
    needed = {"epoch", "global_step", "best", "history", "tensors", "optimizer", "scheduler", "rng"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise ConfigError(f"cannot resume: the checkpoint {path} is not a roberta-lora training state; start the "
                          "run again with --overwrite")
    return state


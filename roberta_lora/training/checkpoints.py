"""Checkpoints: everything a resume needs after a finished epoch, and resuming from it."""

from __future__ import annotations

import logging
import random
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


def save_checkpoint(run_dir: Path, model: LoraWrapperRoberta, optimizer: Any, scheduler: Any, epoch: int,
                    global_step: int, best: dict[str, Any], history: RunHistory) -> None:
    """Everything a resume needs after a finished epoch, in ONE atomically written file.

    training_state.pt holds the trained tensors, optimizer, scheduler and RNG state together, so a
    kill at any moment leaves either the previous epoch's checkpoint or this one, never a mix.
    checkpoint/adapter/ is a readable copy (written first); resuming never reads it.
    """
    checkpoint = run_dir / "checkpoint"
    model.save_adapter(checkpoint / "adapter")
    save_training_state(checkpoint, {
        "epoch": epoch, "global_step": global_step, "best": best, "history": asdict(history),
        "tensors": {name: t.detach().cpu().clone() for name, t in model.trainable_state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
    })


def resume_from_checkpoint(run_dir: Path, state: dict[str, Any], accelerator: Any, model: Any, optimizer: Any,
                           scheduler: Any) -> tuple[int, int, dict[str, Any], RunHistory]:
    """Put the checkpoint's tensors, optimizer, scheduler and RNG state (from `load_training_state`) back."""
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    live = dict(unwrapped.named_parameters())
    expected = {name: live[name] for name in unwrapped.trainable_state_dict()}
    check_tensors(state["tensors"], expected, str(run_dir / "checkpoint" / STATE_NAME))
    with torch.no_grad():
        for name, tensor in state["tensors"].items():
            live[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    logger.info("resumed %s after epoch %d (step %d)", run_dir, state["epoch"], state["global_step"])
    return state["epoch"], state["global_step"], state["best"], RunHistory(**state["history"])



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
        raise ConfigError(f"cannot resume: {path} does not exist (the run has no finished epoch to resume from)")
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


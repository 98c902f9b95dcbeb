"""What a process computes on: the accelerate `Accelerator` and the torch.compile check.

Training and evaluation both get their accelerator here. accelerate keeps one state per
process (device, process group, mixed precision); a second training in the same process (a
notebook, `train-all`) reuses it when the precision is the same, and is refused with a clear
message when it is not, because accelerate cannot change the precision of a running process.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, is_initialized

from roberta_lora.errors import ConfigError

# accelerate's tracker name -> the package it needs.
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                   "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}


def make_accelerator(mixed_precision: str | None = "no", grad_accum: int = 1, log_with: str = "none",
                     project_dir: str | Path | None = None) -> Accelerator:
    """The one place an Accelerator is made (training, `evaluate_adapter`).

    Args:
        mixed_precision: "no", "fp16" or "bf16"; None takes the process's current setting ("no" in a
            new process) for callers that never let accelerate autocast (evaluation does not `prepare`
            its model, so it always computes in the model's own precision).
        grad_accum: gradient accumulation steps (accelerate updates these for a running process).
        log_with: an experiment tracker accelerate supports ("tensorboard", "wandb", ...) or "none".
        project_dir: where file-based trackers (TensorBoard) write: the run folder.

    Raises:
        ConfigError: fp16 without CUDA, or a precision other than the one this process already uses.
    """
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("--mixed-precision fp16 needs a CUDA GPU; on CPU use --mixed-precision bf16 or no")
    if mixed_precision is None:
        mixed_precision = AcceleratorState().mixed_precision if is_initialized() else "no"
    elif is_initialized():
        current = AcceleratorState().mixed_precision
        if current != mixed_precision:
            raise ConfigError(
                f"this Python process already ran accelerate with mixed_precision={current!r}, and accelerate "
                f"cannot switch a running process to {mixed_precision!r}; run this training or evaluation in a "
                f"new process (a separate `roberta-lora` command or a fresh notebook kernel), or keep "
                f"--mixed-precision {current}"
            )
    # cpu=True without CUDA: `accelerate launch --multi_gpu --num_processes N` then runs N gloo
    # processes on the CPU (accelerate only picks its MULTI_CPU mode when told the run is on CPU).
    trackers = {} if log_with == "none" else {"log_with": log_with, "project_dir": str(project_dir) if project_dir else None}
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       cpu=not torch.cuda.is_available(), **trackers)


def check_tracker(name: str) -> None:
    """Fail before any work when `--report-to NAME` needs a package that is not installed."""
    if name == "none":
        return
    module = TRACKER_MODULES.get(name, name)
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"--report-to {name} needs the {module} package, which is not installed; "
                          f"pip install {module} (TensorBoard: pip install -e '.[tracking]'), or leave --report-to out")


def check_compile_backend(backend: str) -> None:
    """Fail before any work when torch.compile cannot run here (inductor on CPU builds C++ code)."""
    if backend == "inductor" and not torch.cuda.is_available():
        compilers = [os.environ.get("CXX") or "", "g++", "c++", "clang++"]
        if not any(name and shutil.which(name) for name in compilers):
            raise ConfigError(
                "--torch-compile with the inductor backend needs a C++ compiler on CPU (none of g++, c++, "
                "clang++ or $CXX was found); install one, or train without --torch-compile"
            )


def compile_model(model: torch.nn.Module, backend: str) -> Any:
    """torch.compile(model) with `backend`; the returned module shares `model`'s parameters."""
    return torch.compile(model, backend=backend)


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The device to run inference on: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".

    Raises:
        ConfigError: an unknown name, or CUDA asked for where there is none (or not that many GPUs).
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N (N a GPU number such as 0)")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec} needs a CUDA GPU, and torch sees none here (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(f"--device {spec}: this machine has {count} GPU(s), numbered 0-{count - 1}; pick one of them")
    return torch.device(text)


def resolve_dtype(name: str | None = "float32", device: torch.device | None = None) -> torch.dtype:
    """The weight dtype for inference: "float32", "bfloat16" or "float16" (float16 needs CUDA: CPU kernels
    for half precision are slow or missing).

    Raises:
        ConfigError: an unknown name, or float16 on the CPU.
    """
    from roberta_lora.choices import DTYPES

    text = "float32" if name is None else str(name).strip().lower()
    if text not in DTYPES:
        raise ConfigError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
    if text == "float16" and device is not None and device.type != "cuda":
        raise ConfigError("--dtype float16 needs a CUDA device; on the CPU use --dtype bfloat16 or float32")
    return getattr(torch, text)

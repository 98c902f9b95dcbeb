"""Adapter files on disk: atomic writes, safe reads, and the base-model fingerprint.

An adapter directory holds `adapter.safetensors` (only the trained tensors) and
`adapter_config.json`. Reading never unpickles: safetensors and JSON only. Every file is
written to a temporary file in the same directory and renamed into place, and the config
records the sha256 of the tensors file, so an interrupted save is detected, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from roberta_lora.adapter_config import AdapterConfig
from roberta_lora.errors import AdapterError

WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20  # a real config is ~1 kB; refuse to parse anything absurd


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Let `writer` fill a temporary path (e.g. `torch.save`, `fig.savefig`), then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@torch.no_grad()
def base_fingerprint(encoder: nn.Module) -> str | None:
    """A short hash identifying the base weights an adapter is trained on.

    Uses the embedding tables and the embedding LayerNorm: they are never quantized (so a QLoRA
    adapter matches its full-precision base) and differ between any two checkpoints. For each
    tensor: name, shape, the float64 sum and an evenly strided sample of 4096 values. Cheap
    (milliseconds for roberta-base), deterministic across machines for the same checkpoint.
    Returns None for a model on the meta device (no values to hash).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        if not name.startswith("embeddings."):
            continue
        if tensor.is_meta:
            return None
        flat = tensor.detach().reshape(-1).to("cpu", torch.float64)
        step = max(1, flat.numel() // 4096)
        digest.update(f"{name}:{tuple(tensor.shape)}:{flat.sum().item():.6e}".encode())
        digest.update(flat[::step].to(torch.float32).numpy().round(6).tobytes())
    return digest.hexdigest()[:16]


def save_adapter_files(directory: Path, tensors: Mapping[str, torch.Tensor], config: AdapterConfig) -> None:
    """Write the tensors and the config (with the tensors' sha256) atomically into `directory`."""
    directory = Path(directory)
    payload = save_safetensors_bytes(
        {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()},
        metadata={"format": "pt", "producer": "roberta-lora"},
    )
    # Tensors first, then the config that vouches for them.
    atomic_write_bytes(directory / WEIGHTS_NAME, payload)
    text = config.to_json()
    digest = hashlib.sha256(payload).hexdigest()
    atomic_write_text(directory / CONFIG_NAME, _with_digest(text, digest))


def _with_digest(config_json: str, digest: str) -> str:
    data = json.loads(config_json)
    return json.dumps({**data, "weights_sha256": digest}, indent=2, sort_keys=True) + "\n"


def read_adapter_config(directory: Path) -> tuple[AdapterConfig, str | None]:
    """Parse adapter_config.json; returns the config and the recorded sha256 of the tensors file."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise AdapterError(f"adapter directory {directory} does not exist; pass the folder that holds {CONFIG_NAME}")
    if not path.is_file():
        present = sorted(p.name for p in directory.iterdir())[:10]
        raise AdapterError(f"{path} is missing (found {present}); an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path} is {path.stat().st_size} bytes; a valid adapter config is a few kB")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError(f"{path} is not valid UTF-8 JSON ({error}); re-download or re-save the adapter") from None
    digest = data.pop("weights_sha256", None) if isinstance(data, dict) else None
    if digest is not None and not isinstance(digest, str):
        raise AdapterError(f"{path}: weights_sha256 must be a string, got {type(digest).__name__}")
    return AdapterConfig.from_dict(data, source=str(path)), digest


def read_adapter_tensors(directory: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Read adapter.safetensors (never pickle), checking it against the recorded sha256."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"{path} is missing; an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    payload = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(payload).hexdigest() != expected_sha256:
        raise AdapterError(
            f"{path} does not match the sha256 recorded in {CONFIG_NAME}: the file is corrupt or a save was "
            "interrupted; re-download or re-save the adapter"
        )
    try:
        tensors = load_safetensors_bytes(payload)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as error:
        raise AdapterError(f"{path} is not a valid safetensors file ({error}); re-download or re-save it") from None
    return tensors


def check_tensors(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise AdapterError unless `tensors` has exactly the expected names, shapes and float dtypes."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_preview(unexpected)}")
    for name in sorted(set(tensors) & set(expected)):
        got, want = tensors[name], expected[name]
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{name} has shape {tuple(got.shape)}, the model expects {tuple(want.shape)}")
        elif not got.dtype.is_floating_point:
            problems.append(f"{name} has dtype {got.dtype}, expected a floating-point tensor")
    if problems:
        raise AdapterError(
            f"{source} does not fit this model: " + "; ".join(problems[:8])
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            + " (was it saved for another task, rank, head, targets or model size?)"
        )


def _preview(names: list[str]) -> str:
    return str(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")

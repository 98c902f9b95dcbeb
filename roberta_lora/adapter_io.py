"""Adapter files on disk: atomic writes, safe reads, and the base-model fingerprint.

An adapter directory holds `adapter.safetensors` (only the trained tensors) and
`adapter_config.json`. Reading never unpickles: safetensors and JSON only. Every file is
written to a temporary file in the same directory and renamed into place, and the config
records the sha256 of the tensors file, so an interrupted save is detected, never loaded.

Adapter files come from strangers, so reading treats them as untrusted input: sizes are
checked before anything is allocated, the safetensors header is checked (length, JSON,
floating-point dtypes only) before the tensors are built, values must be finite, and every
problem is an `AdapterError` that names the file. The tensors file's header also records
`lora_alpha` (the one setting that changes what an adapter computes without changing any
tensor shape), so a config edited or corrupted there is refused while the tensors are intact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit for the JSON header
# What an adapter's tensors may be stored as (safetensors names): floats only, never ints or bools.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_ALPHA_KEY = "lora_alpha"  # in the safetensors metadata, next to "format" and "producer"


def _file_mode() -> int:
    """0o666 minus the process umask: what `open()` would give; mkstemp alone gives 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Let `writer` fill a hidden temporary file beside `path` (e.g. `torch.save`, `fig.savefig`), sync it
    to disk, then rename it into place: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        with open(tmp, "rb") as handle:  # on disk before the rename
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
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
    """Write the tensors and the config (with the tensors' sha256) atomically into `directory`.

    Raises AdapterError, writing nothing, when a tensor holds NaN or infinite values: loading would
    refuse the file, and a diverged model must not replace a good adapter or checkpoint.
    """
    directory = Path(directory)
    bad = [name for name, tensor in sorted(tensors.items()) if not bool(torch.isfinite(tensor.detach()).all())]
    if bad:
        raise AdapterError(
            f"not saving {directory}: tensors {_preview(bad)} hold NaN or infinite values (did training diverge? "
            "lower the learning rate); the files already there are kept"
        )
    payload = save_safetensors_bytes(
        {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()},
        metadata={"format": "pt", "producer": "roberta-lora", _ALPHA_KEY: repr(float(config.lora_alpha))},
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
        data = _strict_json(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise AdapterError(f"{path} is not valid UTF-8 JSON ({error}); re-download or re-save the adapter") from None
    digest = data.pop("weights_sha256", None) if isinstance(data, dict) else None
    if digest is not None and not isinstance(digest, str):
        raise AdapterError(f"{path}: weights_sha256 must be a string, got {type(digest).__name__}")
    config = AdapterConfig.from_dict(data, source=str(path))
    _check_recorded_alpha(config, directory / WEIGHTS_NAME, path)
    return config, digest


def _strict_json(text: str) -> Any:
    """json.loads without the non-standard NaN / Infinity literals (no value may be non-finite) and
    without lone surrogates ("\\ud800" escapes: strings that no file name or terminal can take)."""
    def refuse(literal: str) -> None:
        raise ValueError(f"the non-standard literal {literal} is not allowed")

    data = json.loads(text, parse_constant=refuse)
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds an invalid \\uXXXX escape (a lone surrogate)") from None
    return data


def _check_recorded_alpha(config: AdapterConfig, weights: Path, config_path: Path) -> None:
    """Refuse a config whose lora_alpha differs from the one recorded in the tensors file's header.

    Files without the record (older saves, other tools) are not checked; a broken tensors file
    is left for `read_adapter_tensors` to report.
    """
    if not weights.is_file():  # absent, or a FIFO / device that open() would block on or read forever
        return
    try:
        with open(weights, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(size - 8, MAX_HEADER_BYTES):
                return
            header = _strict_json(handle.read(length).decode("utf-8"))
        recorded = float(header["__metadata__"][_ALPHA_KEY])
    except (OSError, struct.error, ValueError, RecursionError, UnicodeDecodeError, KeyError, TypeError):
        return
    if math.isfinite(recorded) and recorded != float(config.lora_alpha):
        raise AdapterError(
            f"{config_path} says lora_alpha={config.lora_alpha!r} but {weights.name} was saved with "
            f"lora_alpha={recorded!r}: the config was edited or corrupted (lora_alpha scales every LoRA update). "
            f"Restore lora_alpha={recorded!r} or re-download the adapter"
        )


def read_adapter_tensors(directory: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Read adapter.safetensors (never pickle), checking it against the recorded sha256.

    Raises AdapterError for a missing, corrupt or mismatching file, a header that declares more
    than the file holds, a non-float dtype, or values that are NaN or infinite.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"{path} is missing; an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    payload = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(payload).hexdigest() != expected_sha256:
        raise AdapterError(
            f"{path} does not match the sha256 recorded in {CONFIG_NAME}: the file is corrupt or a save was "
            "interrupted; re-download or re-save the adapter"
        )
    _check_header(payload, path)
    try:
        tensors = load_safetensors_bytes(payload)
    except (SafetensorError, ValueError, RuntimeError, OverflowError, KeyError, TypeError) as error:
        raise AdapterError(f"{path} is not a valid safetensors file ({error}); re-download or re-save it") from None
    bad = [name for name, tensor in sorted(tensors.items()) if not bool(torch.isfinite(tensor).all())]
    if bad:
        raise AdapterError(f"{path}: tensors {_preview(bad)} hold NaN or infinite values; re-download or retrain it")
    return tensors


def _check_header(payload: bytes, path: Path) -> None:
    """Check the safetensors header before the library builds anything from it.

    Layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
    {"dtype", "shape", "data_offsets"} (plus an optional "__metadata__"), then the raw data.
    """
    def fail(problem: str) -> AdapterError:
        return AdapterError(f"{path} is not a valid safetensors file ({problem}); re-download or re-save it")

    if len(payload) < 8:
        raise fail(f"{len(payload)} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", payload[:8])
    if length > len(payload) - 8 or length > MAX_HEADER_BYTES:
        raise fail(f"the header declares {length} bytes but the file holds {len(payload)}")
    try:
        header = _strict_json(payload[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise fail(f"the header is not UTF-8 JSON: {error}") from None
    if not isinstance(header, dict):
        raise fail(f"the header is a JSON {type(header).__name__}, expected an object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if dtype not in FLOAT_DTYPES:
            raise AdapterError(
                f"{path}: tensor {name!r:.100} is stored as {dtype!r:.40}; adapter tensors are floating point "
                f"({', '.join(FLOAT_DTYPES)}). Re-save the adapter"
            )


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

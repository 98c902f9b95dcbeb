"""Adapter tensors on disk: written atomically, read safely, checked against the model.

An adapter directory holds `adapter.safetensors` (only the trained tensors) and
`adapter_config.json` (see `model.config`), plus any text files saved with them (a model card).
Reading never unpickles: safetensors and JSON only. A save writes the whole folder as a hidden
sibling and swaps it in as one unit (`fileio.replace_folder_atomically`), because the config
records the sha256 of the tensors file: replaced one file at a time, a kill between the two
would leave a folder that agrees with neither version and loads as neither. Files a user put in
the folder are kept.

Adapter files come from strangers, so reading treats them as untrusted input: sizes are
checked before anything is allocated, the safetensors header is checked (length, JSON,
floating-point dtypes only) before the tensors are built, values must be finite, and every
problem is an `AdapterError` that names the file. The tensors file's header also records
`lora_alpha` (the one setting that changes what an adapter computes without changing any
tensor shape), so a config edited or corrupted there is refused while the tensors are intact.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.fileio import (
    atomic_write_bytes,
    atomic_write_text,
    replace_folder_atomically,
    restore_interrupted_replace,
    safetensors_header,
    sorted_safetensors_metadata,
)
from roberta_lora.model.config import (
    ALPHA_KEY,
    CONFIG_NAME,
    RSLORA_KEY,
    WEIGHTS_NAME,
    AdapterConfig,
    config_json_with_digest,
    refuse_links_out,
)

# What an adapter's tensors may be stored as (safetensors names): floats only, never ints or bools.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


# A fingerprint names its version: "v2-" + 16 hex digits. Adapters written by roberta-lora 0.1 carry the first
# version (16 hex digits, no prefix), checked with `legacy_base_fingerprint`.
FINGERPRINT_VERSION = "v2"
_SAMPLE = 256  # values read from each tensor


def _fingerprinted_tensors(encoder: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors a fingerprint reads, by name: every Embedding and LayerNorm tensor and every bias, in every
    layer. Linear weights are left out: QLoRA stores them quantized, and a QLoRA adapter must match its
    full-precision base. Fine-tuning changes the biases and LayerNorms of every layer, so two checkpoints that
    share their embeddings (a fine-tuned model and its base) still differ here. Names are the plain encoder's,
    with LoRA injected or not."""
    chosen: list[tuple[str, torch.Tensor]] = []
    for module_name, module in encoder.named_modules():
        if module_name == "pooler" or module_name.startswith("pooler."):
            continue  # a BertModel passed in with its pooler is the same base as its checkpoint loaded without
        whole = isinstance(module, (nn.Embedding, nn.LayerNorm))
        for tensor_name, tensor in module.named_parameters(recurse=False):
            if (whole or tensor_name == "bias") and tensor is not None and tensor.is_floating_point():
                name = f"{module_name}.{tensor_name}" if module_name else tensor_name
                chosen.append((name.replace(".base_layer.", "."), tensor))  # LoraLinear's wrapped layer: plain name
    return sorted(chosen, key=lambda item: item[0])


@torch.no_grad()
def base_fingerprint(encoder: nn.Module) -> str | None:
    """A short hash identifying the base weights an adapter is trained on: "v2-" and 16 hex digits.

    For each of `_fingerprinted_tensors` (embeddings, LayerNorms, biases of every layer): its name, shape and
    256 evenly strided values, read from a strided view of the tensor, so nothing the size of a weight is
    copied (3 ms for roberta-base, 13 ms for XLM-R-large; 0.1 took 0.28 s and 2.3 s with +294 MB and +1.95 GB:
    benchmarks/results/fingerprint.md). Values are hashed as float32, rounded to 6 decimals, so the same
    checkpoint gives the same hash on any machine.
    Returns None for a model on the meta device (no values to hash).
    """
    digest = hashlib.sha256()
    for name, tensor in _fingerprinted_tensors(encoder):
        if tensor.is_meta:
            return None
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _SAMPLE)][:_SAMPLE]
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(sample.to("cpu", torch.float32).numpy().round(6).tobytes())
    return f"{FINGERPRINT_VERSION}-{digest.hexdigest()[:16]}"


@torch.no_grad()
def legacy_base_fingerprint(encoder: nn.Module, replaced: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """The fingerprint roberta-lora 0.1 wrote (16 hex digits): the embedding tensors only, each by name, shape,
    float64 sum and a strided sample of 4096 values. Computed only when an adapter of that version is checked,
    one tensor at a time. `replaced` gives the base values of tensors an adapter has overwritten since."""
    replaced = replaced or {}
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        if not name.startswith("embeddings."):
            continue
        tensor = replaced.get(name, tensor)
        if tensor.is_meta:
            return None
        flat = tensor.detach().reshape(-1).to("cpu", torch.float64)
        step = max(1, flat.numel() // 4096)
        digest.update(f"{name}:{tuple(tensor.shape)}:{flat.sum().item():.6e}".encode())
        digest.update(flat[::step].to(torch.float32).numpy().round(6).tobytes())
        del flat
    return digest.hexdigest()[:16]


def is_legacy_fingerprint(value: str | None) -> bool:
    return value is not None and re.fullmatch(r"[0-9a-f]{16}", value) is not None


def save_adapter_files(directory: str | Path, tensors: Mapping[str, torch.Tensor], config: AdapterConfig,
                       extra_files: Mapping[str, str] | None = None) -> None:
    """Replace the adapter folder `directory` as one unit: tensors, config (with the tensors' sha256) and
    `extra_files`, so a reader, or a save killed at any point, sees the old adapter or the new one whole.

    Args:
        directory: the adapter folder; other files already in it (a user's notes) are kept.
        tensors: the adapter's tensors, stored in adapter.safetensors.
        config: stored in adapter_config.json; its lora_alpha is also recorded in the tensors file.
        extra_files: file name -> text (UTF-8) written with them, e.g. {"README.md": card}.

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
    extra_files = dict(extra_files or {})
    _check_extra_files(directory, extra_files)
    payload = sorted_safetensors_metadata(save_safetensors_bytes(
        {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()},
        metadata={"format": "pt", "producer": "roberta-lora", ALPHA_KEY: repr(float(config.lora_alpha)),
                  RSLORA_KEY: str(bool(config.use_rslora)).lower()},
    ))  # the same adapter saves to the same bytes (and digest)
    config_text = config_json_with_digest(config, hashlib.sha256(payload).hexdigest())

    def fill(folder: Path) -> None:
        # Each file is itself written atomically, so even the hidden folder never shows a cut file.
        atomic_write_bytes(folder / WEIGHTS_NAME, payload)
        atomic_write_text(folder / CONFIG_NAME, config_text)
        for name, text in extra_files.items():
            atomic_write_text(folder / name, text)

    replace_folder_atomically(directory, fill)


def _check_extra_files(directory: Path, extra_files: Mapping[str, str]) -> None:
    """Extra files are text files beside the adapter's own two: never in a subfolder, never over them."""
    for name, text in extra_files.items():
        plain = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
        if not plain or name in (WEIGHTS_NAME, CONFIG_NAME):
            raise ConfigError(
                f"not saving {directory}: extra file name {name!r:.100} must be a plain file name (no folder) other "
                f"than {WEIGHTS_NAME} and {CONFIG_NAME}, e.g. 'README.md'"
            )
        if not isinstance(text, str):
            raise ConfigError(
                f"not saving {directory}: extra file {name!r} must be given as text (str), got {type(text).__name__}"
            )


def read_adapter_tensors(directory: str | Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Read adapter.safetensors (never pickle), checking it against the recorded sha256.

    Raises AdapterError for a missing, corrupt or mismatching file, a symbolic link out of the folder, a
    header that declares more than the file holds, a non-float dtype, or values that are NaN or infinite.
    """
    restore_interrupted_replace(directory)  # a save killed between its two fallback renames
    refuse_links_out(directory)
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
    """The header must parse (`fileio.safetensors_header`) and declare floating-point tensors only."""
    try:
        header = safetensors_header(payload)
    except ValueError as error:
        raise AdapterError(f"{path} is not a valid safetensors file ({error}); re-download or re-save it") from None
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

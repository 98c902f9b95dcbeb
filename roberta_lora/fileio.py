"""Files written atomically and files read defensively: the one home of both, for every layer.

Writers fill a hidden temporary file beside the target, sync it and rename it into place, so a
reader (or a run killed half-way) sees the old file or the whole new one, never a part. The
safetensors header is parsed here, once, for everyone who needs it before the tensors are built.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit for the JSON header


def _file_mode() -> int:
    """0o666 minus the process umask: what `open()` would give; mkstemp alone gives 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write_with`)."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Mapping[str, Any] | list, indent: int | None = 2) -> None:
    """One JSON document, UTF-8, with a final newline, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def strict_json(text: str) -> Any:
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


def safetensors_header(payload: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked before anything is built from it.

    Layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
    {"dtype", "shape", "data_offsets"} (plus an optional "__metadata__"), then the raw data.
    `payload` may be the whole file or just its first 8 + N bytes.

    Raises:
        ValueError: saying what is wrong (too short, a length past the data, not a JSON object).
    """
    if len(payload) < 8:
        raise ValueError(f"{len(payload)} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", payload[:8])
    if length > len(payload) - 8 or length > MAX_HEADER_BYTES:
        raise ValueError(f"the header declares {length} bytes but the file holds {len(payload)}")
    try:
        header = strict_json(payload[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"the header is not UTF-8 JSON: {error}") from None
    if not isinstance(header, dict):
        raise ValueError(f"the header is a JSON {type(header).__name__}, expected an object")
    return header


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """`safetensors_header` of a file on disk, reading only the header's bytes.

    Raises:
        OSError: the file cannot be read. ValueError: see `safetensors_header`.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{len(prefix)} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"the header declares {length} bytes but the file holds {size}")
        return safetensors_header(prefix + handle.read(length))

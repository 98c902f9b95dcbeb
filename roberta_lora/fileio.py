"""Files and folders written atomically, and files read defensively: the one home of both, for every layer.

Writers fill a hidden temporary file beside the target, sync it and rename it into place, so a
reader (or a run killed half-way) sees the old file or the whole new one, never a part. A folder
whose files must agree with each other (an adapter: tensors and the config that records their
sha256) is replaced the same way, as a whole (`replace_folder_atomically`). The safetensors header
is parsed here, once, for everyone who needs it before the tensors are built.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import tempfile
import warnings
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


# ----------------------------------------------------------------------------- whole folders
# Linux renameat2(2): swap two paths in one step, so `target` is never missing, not even for an instant.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# The kernel, libc or filesystem cannot exchange: use the two-rename fallback instead.
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def replace_folder_atomically(target: str | Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` write a whole new version of the folder `target`, then swap it in as one unit.

    Files that must agree with each other (an adapter's tensors and the config that records their
    sha256) can then never be seen half old, half new, even when the process is killed mid-save.
    `fill(tmp)` writes into a hidden sibling folder `.NAME.new-XXXXXXXX`; files of the old folder
    that the new one does not write (a user's notes) are carried over (hard links, else copies),
    everything is synced, and the new folder replaces the old one: one `os.replace` when `target`
    does not exist, else an atomic exchange (Linux `renameat2`), else (other systems and
    filesystems) two renames, with the old folder set aside as `.NAME.old-XXXXXXXX` in between
    (`restore_interrupted_replace` puts it back if a kill lands there). A symlink `target` is
    resolved: the folder it points to is replaced. Hidden siblings of those two forms left by
    earlier killed saves of `target` are removed first; nothing else is touched.

    Raises:
        NotADirectoryError: `target` is a file. ValueError: `target` holds the working directory.
        OSError: from `fill` or the filesystem; the old folder is then left as it was.
    """
    target = _folder_target(target)
    restore_interrupted_replace(target)
    for leftover in _our_siblings(target):
        _remove_tree(leftover)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.new-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        fill(tmp)
        if target.is_dir():
            _carry_extras(target, tmp)
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        _sync_tree(tmp)
        _swap_in(tmp, target)
    finally:  # the unfinished new folder, or after an exchange the old one
        _remove_tree(tmp)


def restore_interrupted_replace(target: str | Path) -> bool:
    """Put back the folder a killed fallback swap had set aside; True when it did.

    Between the fallback's two renames `target` is missing and its old version is the one hidden
    sibling `.NAME.old-XXXXXXXX`; readers and the next save call this first. With none, or more
    than one, such sibling nothing is done (there is no single right answer to restore).
    """
    target = Path(os.path.realpath(target))
    if os.path.lexists(target):
        return False
    aside = _our_siblings(target, "old")
    if len(aside) != 1:
        return False
    try:
        os.rename(aside[0], target)
    except OSError as error:  # another process restored or saved it first
        if error.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    _fsync_dir(target.parent)
    return True


def _folder_target(target: str | Path) -> Path:
    """`target` as an absolute path with symlinks resolved, refused when it cannot be swapped out."""
    path = Path(os.path.realpath(target))
    if os.path.lexists(path) and not path.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"{path} is a file, expected a folder (or nothing): move the file away or save elsewhere"
        )
    cwd = Path.cwd()
    if cwd == path or path in cwd.parents:
        raise ValueError(
            f"cannot replace {path}: it holds the working directory {cwd}, which would be left deleted; "
            "save into a subfolder instead (e.g. ./adapter)"
        )
    return path


def _our_siblings(target: Path, kinds: str = "new|old") -> list[Path]:
    """Hidden folders beside `target` named as this module names them (never a file or a symlink)."""
    pattern = re.compile(re.escape(f".{target.name}.") + f"(?:{kinds})-[0-9a-f]{{8}}")
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return []
    return sorted(Path(entry.path) for entry in entries
                  if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False))


def _carry_extras(old: Path, new: Path) -> None:
    """Link (or copy) into `new` what `old` holds and `new` does not, so a save loses nothing on disk."""
    for entry in os.scandir(old):
        dest = new / entry.name
        if os.path.lexists(dest):  # the save wrote its own version
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dest)
        elif entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, dest)


def _link_or_copy(source: str, dest: str) -> None:
    try:
        os.link(source, dest)
    except OSError:  # no hard links here (some filesystems, protected_hardlinks): a copy keeps the data too
        shutil.copy2(source, dest)


def _sync_tree(folder: Path) -> None:
    """fsync every regular file and folder under `folder`: on disk before the swap makes them visible."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                _fsync_path(path)
        _fsync_dir(dirpath)


def _swap_in(new: Path, target: Path) -> None:
    """Make `new` be `target`; afterwards `new` is gone or holds the old folder (the caller removes it)."""
    if not os.path.lexists(target):
        os.replace(new, target)
    elif not _exchange(new, target):
        aside = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
        os.rename(target, aside)
        try:
            os.rename(new, target)
        except BaseException:
            if not os.path.lexists(target):
                os.rename(aside, target)
            raise
        _fsync_dir(target.parent)
        _remove_tree(aside)
        return
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap `a` and `b` atomically; False where this system or filesystem cannot (use the fallback)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    code = renameat2(os.fsencode(a), os.fsencode(b), _RENAME_EXCHANGE)
    if code in _NO_EXCHANGE:
        return False
    if code:
        raise OSError(code, os.strerror(code), str(a), None, str(b))
    return True


@functools.cache
def _renameat2() -> Callable[[bytes, bytes, int], int] | None:
    """libc's renameat2 as `(old, new, flags) -> errno` (0: done); None off Linux or without it (glibc < 2.28)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here, so importing this module stays cheap for the CLI

    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int

    def call(old: bytes, new: bytes, flags: int) -> int:
        return 0 if function(_AT_FDCWD, old, _AT_FDCWD, new, flags) == 0 else ctypes.get_errno()

    return call


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (a rename, a new file) durable; Windows cannot open a folder to do so."""
    if os.name == "posix":
        _fsync_path(path)


def _remove_tree(path: Path) -> None:
    """Delete a temporary folder of ours (symlinks inside are removed, never followed)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        warnings.warn(f"could not remove the temporary folder {path} ({error}); nothing in it is needed, "
                      "delete it by hand", stacklevel=3)


def link_out_of(folder: str | Path, name: str) -> Path | None:
    """Where `folder/name` leads when symbolic links take it outside `folder`, else None (no link, a link
    inside the folder, or a missing file). A Hugging Face cache snapshot links each file to its repo's
    `blobs/` folder: a link from a snapshot into the same repo's blobs counts as inside."""
    path = Path(folder) / name
    if not os.path.islink(path):  # `name` is a plain file name: only the file itself can be a link
        return None
    try:
        home, target = Path(folder).resolve(), path.resolve()
    except (OSError, RuntimeError):  # a loop of links
        return path
    if target.is_relative_to(home):
        return None
    for ancestor in (home, *home.parents):  # .../<repo>/snapshots/<revision>[/<subfolder>]
        if ancestor.parent.name == "snapshots" and target.is_relative_to(ancestor.parent.parent / "blobs"):
            return None
    return target


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


def sorted_safetensors_metadata(payload: bytes) -> bytes:
    """`payload` (a whole safetensors file) with its "__metadata__" keys in sorted order.

    The safetensors library writes the metadata from a hash map, so two saves of the same tensors and the
    same metadata can order those keys differently: equal content, different bytes and digests. Sorting
    them makes a save a function of its content. Only the header's bytes change, and only when the
    re-serialized header has exactly the original length (same keys, same values, compact JSON); otherwise
    `payload` is returned as it is, still a valid file. The tensors' entries keep their order.
    """
    try:
        header = safetensors_header(payload)
    except ValueError:
        return payload
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or len(metadata) < 2:
        return payload
    (length,) = struct.unpack("<Q", payload[:8])
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > length or payload[8 + len(text) : 8 + length].strip(b" "):
        return payload  # not the compact layout this expects: leave it alone
    return payload[:8] + text + payload[8 + len(text) :]


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

"""Who may call the server, and where adapters loaded at run time may come from.

The security model of `roberta-lora serve`, in one place:

- **Keys.** With an API key, every endpoint but `/health` needs `Authorization: Bearer <key>`. Loading
  and unloading adapters at run time (`POST` / `DELETE /adapters`) is off unless an admin key is set,
  and then needs that key. Keys are compared in constant time and never logged or counted.
- **Sources.** A run-time load names a folder under one of the adapter roots (relative to a root, or an
  absolute path inside one); the folder and the files in it are resolved with symlinks followed and
  refused when they leave every root. Hub ids are refused unless hub adapters are allowed. A refused
  load says only "not found under the adapter roots" (the same for missing and forbidden), so a client
  learns nothing about the server's files; the server's log keeps the detail.

Adapters given at start-up (`--adapter NAME=DIR`) are the operator's own and are not restricted.
"""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path

from roberta_lora.errors import ConfigError

# What a key may be: printable ASCII without spaces (it travels in a header), long enough to resist guessing.
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{16,512}$")
ADAPTER_FILES = ("adapter_config.json", "adapter.safetensors", "README.md")
LOOPBACK_HOSTS = ("localhost", "::1", "ip6-localhost")


def check_key(key: str | None, flag: str) -> None:
    """Refuse a key that cannot be sent in a header or is too short to be secret."""
    if key is None:
        return
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        length = len(key) if isinstance(key, str) else type(key).__name__
        raise ConfigError(f"{flag} must be 16-512 printable ASCII characters without spaces (got {length} "
                          "characters); make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def key_matches(header: str | None, key: str) -> bool:
    """Whether an Authorization header carries `Bearer <key>` (constant-time comparison)."""
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), key.encode("ascii"))


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    text = host.strip().strip("[]").lower()
    return text in LOOPBACK_HOSTS or text.startswith("127.")


class RefusedSource(Exception):
    """A run-time load that may not or cannot be served.

    Args:
        reason: what the client is told (generic: no path, no listing).
        detail: what the server log records.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


NOT_FOUND = "not found under the adapter roots"


class AdapterSources:
    """Where run-time loads may read adapters from.

    Args:
        roots: folders under which adapter folders may be loaded (resolved once, symlinks followed).
        allow_hub: whether a Hub id `user/name[@rev]` may be loaded (from the Hub cache when offline).
    """

    def __init__(self, roots: list[str] | tuple[str, ...] = (), allow_hub: bool = False) -> None:
        resolved = []
        for root in roots:
            path = Path(os.path.expanduser(root))
            if not path.is_dir():
                raise ConfigError(f"--adapter-root {root} is not a folder; pass a folder that holds adapter folders")
            resolved.append(path.resolve())
        self.roots = resolved
        self.allow_hub = allow_hub

    @property
    def enabled(self) -> bool:
        return bool(self.roots) or self.allow_hub

    def resolve(self, source: str) -> Path:
        """The adapter folder `source` names, or RefusedSource. Runs on a worker thread (file system)."""
        if not self.enabled:
            raise RefusedSource(NOT_FOUND, "no --adapter-root and no --allow-hub-adapters: run-time loads have no source")
        if "\0" in source or len(source) > 4096:
            raise RefusedSource(NOT_FOUND, "a path with a NUL byte or over 4096 characters")
        for root in self.roots:
            candidate = Path(source) if os.path.isabs(source) else root / source
            try:
                folder = candidate.resolve(strict=True)
            except (OSError, RuntimeError):  # missing, a loop of links, a name too long
                continue
            if _inside(folder, root) and folder.is_dir():
                self._check_files(folder, root, source)
                return folder
        if self.allow_hub and not os.path.isabs(source) and source.count("/") == 1 and not source.startswith("."):
            return self._hub(source)
        raise RefusedSource(NOT_FOUND, f"{source!r:.200} resolves to no folder inside the roots "
                                      f"{[str(r) for r in self.roots]}")

    @staticmethod
    def _check_files(folder: Path, root: Path, source: str) -> None:
        """Every adapter file in the folder must itself stay inside the root (a link out of it is refused)."""
        for name in ADAPTER_FILES:
            path = folder / name
            if path.is_symlink() or path.exists():
                target = path.resolve()
                if not _inside(target, root):
                    raise RefusedSource(NOT_FOUND, f"{source!r:.200}: {name} links to {target}, outside the root {root}")

    @staticmethod
    def _hub(source: str) -> Path:
        from roberta_lora.sources import is_repo_id, resolve_adapter, split_revision

        if not is_repo_id(split_revision(source)[0]):
            raise RefusedSource(NOT_FOUND, f"{source!r:.200} is neither a folder under the roots nor a hub repo id")
        try:
            return resolve_adapter(source)
        except ConfigError as error:
            raise RefusedSource(NOT_FOUND, f"hub adapter {source!r:.200}: {error}") from None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents

"""`AdapterPool`: the served adapters, kept in the engine's memory within a budget (least recently used out).

Each registered name points at one **version**: a source folder, its config, and an engine key unique to
that version (`sst2#3`). A request is checked and tokenized against the version it looked up, and its rows
carry that key, so unloading or replacing a name can never make a queued row run on another adapter: the
batch finds the key gone and answers that row 404 (removed) or 409 (replaced).

`ensure(keys)` runs on the engine's worker thread before each batch: it loads what the batch needs and
drops the least recently used others until what the engine holds fits `budget_bytes` (the batch's own
adapters always stay, even over budget). Sizes are the engine's own count of what it holds for each
adapter (`Engine.nbytes`), which does not change when other adapters come and go. The lock guards the
bookkeeping that the event loop reads.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roberta_lora.data.tokenizer import check_max_length
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.model.config import AdapterConfig, read_adapter_config
from roberta_lora.serving.engine import Engine

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
# Keys every adapter_config.json the toolkit writes has; one without them is not an adapter of ours.
REQUIRED_KEYS = ("task_type", "num_classes", "lora_rank", "lora_alpha", "targets", "model_type", "method")
MAX_LABEL_CHARS = 100


class UnknownAdapter(ConfigError):
    """A request named an adapter that is not registered (or no longer is)."""


class ReplacedAdapter(ConfigError):
    """A request was checked against a version of an adapter that has since been replaced."""


class DuplicateAdapter(ConfigError):
    """A load under a name that is already served."""


@dataclass(frozen=True)
class Version:
    """One loaded version of a served adapter."""

    name: str
    key: str  # the engine's name for this version
    directory: Path
    config: AdapterConfig
    file_bytes: int


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"adapter name {name!r:.80} is not valid; use {NAME_RULE}")
    return name


class AdapterPool:
    """Registered adapters, the loaded subset in LRU order, and the engine they are loaded into.

    Args:
        engine: the engine (touched only from the worker thread).
        budget_bytes: memory the loaded adapters may take; None = no limit.
    """

    def __init__(self, engine: Engine, budget_bytes: int | None = None) -> None:
        self.engine = engine
        self.budget_bytes = budget_bytes
        self._versions: dict[str, Version] = {}  # name -> its current version
        self._keys: dict[str, Version] = {}  # engine key -> version, for every registered version
        self._loaded: OrderedDict[str, int] = OrderedDict()  # key -> bytes the engine holds, least recent first
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self.loads = 0
        self.evictions = 0

    # ------------------------------------------------------------------ event-loop side (cheap)
    def version(self, name: str) -> Version:
        """The current version of `name`, or UnknownAdapter listing what is served."""
        with self._lock:
            version = self._versions.get(name)
            if version is None:
                served = sorted(self._versions)
                listing = f"served adapters: {served[:20]}" + (" ..." if len(served) > 20 else "")
                raise UnknownAdapter(f"unknown adapter {name!r:.80}; {listing}")
            return version

    def config(self, name: str) -> AdapterConfig:
        return self.version(name).config

    def describe(self) -> list[dict[str, Any]]:
        """What GET /adapters shows: no server paths."""
        with self._lock:
            return [_describe(v, self._loaded.get(v.key)) for _, v in sorted(self._versions.items())]

    def describe_one(self, name: str) -> dict[str, Any]:
        version = self.version(name)
        with self._lock:
            return _describe(version, self._loaded.get(version.key))

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._versions

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)

    @property
    def loaded(self) -> list[str]:
        """Names of the adapters in memory, least recently used first."""
        with self._lock:
            return [self._keys[k].name for k in self._loaded]

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(self._loaded.values())

    def check_current(self, key: str) -> None:
        """Raise UnknownAdapter / ReplacedAdapter when `key` is no longer the version served under its name."""
        with self._lock:
            version = self._keys.get(key)
            name = key.rsplit("#", 1)[0]
            current = self._versions.get(name)
        if version is not None:
            return
        if current is None:
            raise UnknownAdapter(f"adapter {name!r} was removed while the request waited")
        raise ReplacedAdapter(f"adapter {name!r} was replaced while the request waited; send the request again")

    # ------------------------------------------------------------------ worker side (touches the engine)
    def register(self, name: str, directory: Path) -> Version:
        """Check the adapter in `directory`, load it and serve it as `name`.

        Raises:
            ConfigError: a name that is not valid. DuplicateAdapter: the name is served.
            AdapterError: an adapter that cannot be served here (bad config or tensors, another base).
        """
        check_name(name)
        if name in self:
            raise DuplicateAdapter(f"an adapter named {name!r} is already served")
        config, _ = read_adapter_config(directory)
        self._check_servable(config, Path(directory))
        size = sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))
        version = Version(name, f"{name}#{next(self._counter)}", Path(directory), config, size)
        with self._lock:
            self._keys[version.key] = version
        try:
            self._load(version.key)
        except Exception:
            with self._lock:
                del self._keys[version.key]
            raise
        with self._lock:
            self._versions[name] = version
        self._evict(keep={version.key})
        return version

    def unregister(self, name: str) -> None:
        """Stop serving `name` and free its memory."""
        version = self.version(name)
        with self._lock:
            del self._versions[name], self._keys[version.key]
            loaded = self._loaded.pop(version.key, None) is not None
        if loaded:
            self.engine.remove(version.key)

    def ensure(self, keys: list[str]) -> set[str]:
        """Load every still-registered version of `keys` (most recently used now); returns the keys that
        are no longer registered (their name was removed or replaced while the examples waited)."""
        wanted = list(dict.fromkeys(keys))
        with self._lock:
            gone = {k for k in wanted if k not in self._keys}
        for key in wanted:
            if key not in gone:
                self._load(key)
        self._evict(keep=set(wanted))
        return gone

    def _load(self, key: str) -> None:
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return
            directory = self._keys[key].directory
        self.engine.add(key, directory)
        with self._lock:
            self._loaded[key] = self.engine.nbytes(key)
            self.loads += 1

    def _evict(self, keep: set[str]) -> None:
        if self.budget_bytes is None:
            return
        while True:
            with self._lock:
                if sum(self._loaded.values()) <= self.budget_bytes:
                    return
                victim = next((k for k in self._loaded if k not in keep), None)
                if victim is None:
                    return  # only this batch's adapters are loaded: they stay, over budget
                del self._loaded[victim]
                self.evictions += 1
            self.engine.remove(victim)

    def _check_servable(self, config: AdapterConfig, directory: Path) -> None:
        """What the config's sha256 does not cover and the engine would trip over mid-request."""
        raw = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        problems = [f"adapter_config.json lacks {missing}"] if missing else []
        labels = list(config.label_names)
        if len(set(labels)) != len(labels):
            problems.append(f"label_names repeat a name ({labels[:10]})")
        if any(not label.strip() or len(label) > MAX_LABEL_CHARS for label in labels):
            problems.append(f"a label name is empty or longer than {MAX_LABEL_CHARS} characters")
        if config.max_length is not None:
            try:
                check_max_length(config.max_length, self.engine.model_config, "the served base")
            except ConfigError as error:
                problems.append(f"max_length {config.max_length}: {error}")
        if config.doc_stride is not None and config.max_length is not None and config.doc_stride >= config.max_length:
            problems.append(f"doc_stride {config.doc_stride} is not below max_length {config.max_length}")
        if problems:
            raise AdapterError(f"{directory}: " + "; ".join(problems))


def _describe(version: Version, held: int | None) -> dict[str, Any]:
    config = version.config
    metrics = {k: v for k, v in config.metrics.items() if isinstance(k, str)}
    return {"name": version.name, "task": config.task, "task_type": config.task_type,
            "labels": list(config.label_names), "rank": config.lora_rank, "method": config.method,
            "size_bytes": held if held is not None else version.file_bytes, "loaded": held is not None,
            "metrics": metrics}

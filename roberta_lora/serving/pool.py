"""`AdapterPool`: the served adapters, kept in the engine's memory within a budget (least recently used out).

Every registered adapter keeps its source (a folder or a hub id, resolved to a folder once) and its
config, so requests can be checked and tokenized without it being in memory. `ensure(names)` runs on
the engine's worker thread before each batch: it loads what the batch needs and drops the least
recently used others until the loaded adapters fit `budget_bytes` (the batch's own adapters always stay,
even over budget). The lock guards the bookkeeping that the event loop reads (`describe`).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roberta_lora.errors import ConfigError
from roberta_lora.model.config import AdapterConfig, read_adapter_config
from roberta_lora.serving.engine import Engine

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnknownAdapter(ConfigError):
    """A request named an adapter that is not registered."""


@dataclass
class Entry:
    source: str
    directory: Path
    config: AdapterConfig
    file_bytes: int


class AdapterPool:
    """Registered adapters, the loaded subset in LRU order, and the engine they are loaded into.

    Args:
        engine: the engine (touched only from the worker thread).
        budget_bytes: memory the loaded adapters may take; None = no limit.
    """

    def __init__(self, engine: Engine, budget_bytes: int | None = None) -> None:
        self.engine = engine
        self.budget_bytes = budget_bytes
        self._entries: dict[str, Entry] = {}
        self._loaded: OrderedDict[str, int] = OrderedDict()  # name -> bytes in memory, least recent first
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    # ------------------------------------------------------------------ event-loop side (cheap)
    def config(self, name: str) -> AdapterConfig:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise UnknownAdapter(f"unknown adapter {name!r}; served adapters: {sorted(self._entries)}; "
                                     "load it with POST /adapters {\"name\", \"path\"}")
            return entry.config

    def describe(self) -> list[dict[str, Any]]:
        """What GET /adapters shows."""
        with self._lock:
            return [{"name": name, "task": e.config.task, "task_type": e.config.task_type,
                     "labels": list(e.config.label_names), "metrics": dict(e.config.metrics),
                     "size_bytes": self._loaded.get(name, e.file_bytes), "loaded": name in self._loaded,
                     "source": e.source} for name, e in sorted(self._entries.items())]

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    # ------------------------------------------------------------------ worker side (touches the engine)
    def register(self, name: str, source: str) -> AdapterConfig:
        """Resolve `source` (folder or hub id), load it and serve it as `name`."""
        from roberta_lora.sources import resolve_adapter

        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ConfigError(f"adapter name {name!r} is not valid; use 1-64 letters, digits, '_', '.', '-' "
                              "starting with a letter or digit")
        if name in self:
            raise ConfigError(f"an adapter named {name!r} is already served; DELETE /adapters/{name} first "
                              "or pick another name")
        directory = resolve_adapter(source)
        config, _ = read_adapter_config(directory)
        size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
        with self._lock:
            self._entries[name] = Entry(source, directory, config, size)
        try:
            self.ensure([name])
        except Exception:
            with self._lock:
                del self._entries[name]
            raise
        return config

    def unregister(self, name: str) -> None:
        """Stop serving `name` and free its memory."""
        self.config(name)  # UnknownAdapter naming what is served
        with self._lock:
            del self._entries[name]
            loaded = self._loaded.pop(name, None) is not None
        if loaded:
            self.engine.remove(name)

    def ensure(self, names: list[str]) -> list[str]:
        """Load every registered adapter of `names` (most recently used now); returns the ones that are
        no longer registered (removed while their examples waited)."""
        wanted = list(dict.fromkeys(names))
        gone = [n for n in wanted if n not in self]
        for name in wanted:
            if name in gone:
                continue
            with self._lock:
                if name in self._loaded:
                    self._loaded.move_to_end(name)
                    continue
                directory = self._entries[name].directory
            self.engine.add(name, directory)
            with self._lock:
                self._loaded[name] = self.engine.nbytes(name)
                self.loads += 1
        self._evict(keep=set(wanted))
        return gone

    def _evict(self, keep: set[str]) -> None:
        if self.budget_bytes is None:
            return
        while True:
            with self._lock:
                if sum(self._loaded.values()) <= self.budget_bytes:
                    return
                victim = next((n for n in self._loaded if n not in keep), None)
                if victim is None:
                    return  # only this batch's adapters are loaded: they stay, over budget
                del self._loaded[victim]
                self.evictions += 1
            self.engine.remove(victim)

    @property
    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

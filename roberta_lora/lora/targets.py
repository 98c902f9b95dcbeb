"""LoRA target names: which linear layers of an encoder layer an adapter adapts.

Pure names, no torch: configs and the CLI validate `--targets` without importing a model.
"""

from __future__ import annotations

from collections.abc import Iterable

from roberta_lora.errors import ConfigError

# Short target name -> module path inside one `encoder.layer.<i>`.
TARGET_PATHS: dict[str, str] = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
DEFAULT_TARGETS: tuple[str, ...] = ("query", "value")
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "qv": DEFAULT_TARGETS,
    "all-linear": tuple(TARGET_PATHS),
    "all_linear": tuple(TARGET_PATHS),
}
SELF_ATTENTION_TARGETS = ("query", "key", "value")


def resolve_targets(targets: str | Iterable[str] | None) -> tuple[str, ...]:
    """Normalise a target list: None -> query+value; "all-linear" -> all six; "query,value" -> a tuple.

    Raises ConfigError listing the valid names when one is unknown.
    """
    if targets is None:
        return DEFAULT_TARGETS
    if isinstance(targets, str):
        names = TARGET_ALIASES.get(targets) or tuple(t.strip() for t in targets.split(",") if t.strip())
    else:
        names = tuple(targets)
    expanded: list[str] = []
    for name in names:
        for part in TARGET_ALIASES.get(name, (name,)):
            if part not in expanded:
                expanded.append(part)
    unknown = [n for n in expanded if n not in TARGET_PATHS]
    if unknown or not expanded:
        raise ConfigError(
            f"unknown LoRA target(s) {unknown or list(names)}; expected names from {list(TARGET_PATHS)} "
            f"or one of the aliases {list(TARGET_ALIASES)} (e.g. --targets query,value or --targets all-linear)"
        )
    # Canonical order, so the same set always gives the same config and tensor names.
    return tuple(t for t in TARGET_PATHS if t in expanded)

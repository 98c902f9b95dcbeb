"""LoRA target names, and where each encoder family keeps the layers they name.

Pure names, no torch: configs and the CLI validate `--targets` without importing a model.

The short target names mean the same projection in every family; `LAYOUTS` says where it lives:

| family (config.model_type) | layers | query / key / value | attention_output | intermediate / output |
|---|---|---|---|---|
| roberta, xlm-roberta, camembert, bert | `encoder.layer.<i>` | `attention.self.query` ... | `attention.output.dense` | `intermediate.dense` / `output.dense` |
| distilbert | `transformer.layer.<i>` | `attention.q_lin` ... | `attention.out_lin` | `ffn.lin1` / `ffn.lin2` |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from roberta_lora.errors import ConfigError

# Short target name -> module path inside one RoBERTa `encoder.layer.<i>`. Its key order is the
# canonical order of targets (configs and tensor names) in every family.
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
# The projections that read the self-attention's input (their LoRA branches share one matmul).
SELF_ATTENTION_TARGETS = ("query", "key", "value")


@dataclass(frozen=True)
class Layout:
    """Where one family keeps what the target names name.

    layers: path of the list of transformer layers inside the encoder ("encoder.layer").
    self_attention: path of the self-attention module inside one layer ("attention.self"); it holds
        the query / key / value projections as direct children.
    paths: short target name -> module path inside one layer.
    """

    layers: str
    self_attention: str
    paths: Mapping[str, str]

    def attribute(self, target: str) -> str:
        """The self-attention module's attribute holding a query / key / value target ("query", "q_lin")."""
        return self.paths[target].removeprefix(self.self_attention + ".")


_BERT_LIKE = Layout("encoder.layer", "attention.self", TARGET_PATHS)
LAYOUTS: dict[str, Layout] = {
    "roberta": _BERT_LIKE,  # roberta-base/-large, distilroberta, CodeBERT, ...
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "bert": _BERT_LIKE,
    "distilbert": Layout("transformer.layer", "attention", {
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attention_output": "attention.out_lin",
        "intermediate": "ffn.lin1",
        "output": "ffn.lin2",
    }),
}
MODEL_TYPES: tuple[str, ...] = tuple(LAYOUTS)  # the supported families, by transformers' config.model_type


def check_model_type(model_type: object, source: str = "the base model") -> str:
    """`model_type` when it is a supported family; ConfigError listing the supported ones otherwise."""
    if model_type not in LAYOUTS:
        what = f"is a {model_type!r} model (config.model_type)" if model_type else "names no config.model_type"
        raise ConfigError(
            f"{source} {what}; roberta-lora supports the encoder families "
            f"{list(MODEL_TYPES)}. Pass a checkpoint of one of them (e.g. roberta-base, bert-base-uncased, "
            "distilbert-base-uncased, xlm-roberta-base)"
        )
    return model_type  # type: ignore[return-value]


def layout(model_type: object) -> Layout:
    """The layout of a family (ConfigError listing the supported families for any other)."""
    return LAYOUTS[check_model_type(model_type)]


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

"""Engines: tokenize examples of any adapter, run them as ONE padded batch, describe the outputs.

Encoding and the descriptions are shared and follow `evaluation.predict.Predictor` (same limits, same
windows for long SQuAD contexts, same rounding), so a served answer equals the offline one. Only the
forward differs: `GroupedEngine` runs one sub-batch per adapter through an `AdapterBank`
(`MultiAdapterPredictor`), `MixedEngine` runs every row in one pass through `BatchedAdapters`.
An engine is not thread-safe: the server drives it from one worker thread only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roberta_lora.data.squad_features import prepare_eval_features
from roberta_lora.data.tokenizer import check_vocabulary, load_tokenizer
from roberta_lora.errors import ConfigError
from roberta_lora.evaluation.predict import adapter_label_names, adapter_limits, describe_logits
from roberta_lora.evaluation.squad_postprocess import postprocess_predictions
from roberta_lora.model.config import AdapterConfig

MODEL_COLUMNS = ("input_ids", "token_type_ids")


@dataclass
class Example:
    """One input of a request: GLUE `text` (+ `text_pair`) or SQuAD `question` + `context`."""

    adapter: str
    text: str | None = None
    text_pair: str | None = None
    question: str | None = None
    context: str | None = None


@dataclass
class Encoded:
    """An example tokenized for its adapter: one feature (GLUE) or one per window (SQuAD)."""

    adapter: str
    config: AdapterConfig
    features: dict[str, list]
    squad_row: dict[str, Any] | None = None  # what postprocess_predictions needs (SQuAD only)
    label_names: list[str] = field(default_factory=list)

    @property
    def windows(self) -> int:
        """Model inputs this example needs: 1 (GLUE) or its SQuAD windows."""
        return len(self.features["input_ids"])

    @property
    def longest(self) -> int:
        """Tokens in its longest window."""
        return max(len(f) for f in self.features["input_ids"])

    @property
    def tokens(self) -> int:
        """Padded cost when it runs alone: windows x longest window."""
        return self.windows * self.longest


def padded_tokens(rows: list[Encoded]) -> int:
    """Tokens of `rows` padded into one batch, as `Engine.predict` runs them: every window x the longest."""
    return sum(r.windows for r in rows) * max((r.longest for r in rows), default=0)


def encode_example(tokenizer: Any, example: Example, config: AdapterConfig) -> Encoded:
    """Tokenize `example` for `config` as `Predictor` does: GLUE truncated to the adapter's max_length,
    SQuAD split into windows (`prepare_eval_features`). A fast tokenizer must not be used by two threads
    at once (its truncation settings are shared state): give each thread its own."""
    max_length, doc_stride = adapter_limits(config)
    labels = adapter_label_names(config)
    if config.task_type != "glue":
        row = {"id": "0", "question": example.question, "context": example.context,
               "answers": {"text": [], "answer_start": []}}
        columns = {k: [v] for k, v in row.items()}
        features = prepare_eval_features(columns, tokenizer, max_length=max_length, doc_stride=doc_stride)
        return Encoded(example.adapter, config, features, row, labels)
    encoded = tokenizer(example.text, example.text_pair, truncation=True, max_length=max_length)
    features = {c: [encoded[c]] for c in MODEL_COLUMNS if c in encoded}
    return Encoded(example.adapter, config, features, None, labels)


class Engine:
    """Tokenizer + description shared by the engines; subclasses own the adapters and the forward.

    Args:
        base_model: the base every adapter is loaded on (a folder, packaged name or hub id).
        device: "auto", "cpu", "cuda" or "cuda:N" (`runtime.resolve_device`).
        dtype: "float32", "bfloat16" or "float16" for the base and every adapter's tables and head.
    """

    def __init__(self, base_model: str, device: str = "auto", dtype: str = "float32") -> None:
        from roberta_lora.runtime import resolve_device, resolve_dtype

        self.base_model = base_model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = load_tokenizer(base_model)
        self.model_config: Any = None  # the base's transformers config (set by subclasses)

    def _base(self) -> Any:
        """The base as a LoraWrapperRoberta on the engine's device and dtype, its vocabulary checked."""
        from roberta_lora.model.wrapper import LoraWrapperRoberta

        wrapper_log = logging.getLogger("roberta_lora.model.wrapper")
        level = wrapper_log.level
        wrapper_log.setLevel(logging.WARNING)  # its "LoRA (r=8) on ..." line is this template's, no adapter's
        try:
            model = LoraWrapperRoberta(model_id=self.base_model, seed=0).eval()
        finally:
            wrapper_log.setLevel(level)
        check_vocabulary(self.tokenizer, model.config, self.base_model)
        self.model_config = model.config
        return model.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ what subclasses provide
    def add(self, name: str, directory: str | Path) -> AdapterConfig:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    @property
    def names(self) -> list[str]:
        raise NotImplementedError

    def nbytes(self, name: str) -> int:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapters: list[str],
                token_type_ids: torch.Tensor | None) -> list[dict[str, Any]]:
        """One dict per row: "logits" (C,) or "start_logits" / "end_logits" (T,)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @torch.inference_mode()
    def predict(self, rows: list[Encoded]) -> list[dict[str, Any]]:
        """Answer every row with one forward pass; one result per row (Predictor's format)."""
        columns = [c for c in MODEL_COLUMNS if all(c in r.features for r in rows)]
        flat = {c: [f for r in rows for f in r.features[c]] for c in columns}
        adapters = [r.adapter for r in rows for _ in r.features["input_ids"]]
        batch = {k: v.to(self.device) for k, v in self.tokenizer.pad(flat, return_tensors="pt").items()}
        outputs = self.forward(batch["input_ids"], batch["attention_mask"], adapters, batch.get("token_type_ids"))
        results, start = [], 0
        for row in rows:
            count = len(row.features["input_ids"])
            results.append(_describe(row, outputs[start : start + count]))
            start += count
        return results


def _describe(row: Encoded, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    if row.squad_row is not None:
        starts = [o["start_logits"].float().cpu().numpy() for o in outputs]
        ends = [o["end_logits"].float().cpu().numpy() for o in outputs]
        answers = postprocess_predictions([row.squad_row], row.features, starts, ends,
                                          version_2=row.config.task_type == "squad_v2")
        return {"answer": answers.predictions["0"], "null_odds": answers.null_odds.get("0"),
                "nbest": _plain(answers.nbest["0"][:3])}
    return describe_logits(outputs[0]["logits"].float().cpu(), row.label_names)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so the result is JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


class GroupedEngine(Engine):
    """One sub-batch per adapter (PEFT's `adapter_names` way) through an `AdapterBank`.

    The bank's active adapter is the bare base (a LoRA model whose B is zero, named `_base`), so every
    served adapter can be removed at any time; `MultiAdapterPredictor` switches and switches back.
    """

    PLACEHOLDER = "_base"

    def __init__(self, base_model: str, device: str = "auto", dtype: str = "float32") -> None:
        super().__init__(base_model, device, dtype)
        from roberta_lora.adapters.bank import AdapterBank
        from roberta_lora.adapters.mixed import MultiAdapterPredictor

        self.bank = AdapterBank(self._base(), self.PLACEHOLDER).eval()
        self.predictor = MultiAdapterPredictor(self.bank)

    def add(self, name: str, directory: str | Path) -> AdapterConfig:
        return self.bank.load_adapter(directory, name)

    def remove(self, name: str) -> None:
        self.bank.delete_adapter(name)

    @property
    def names(self) -> list[str]:
        return [n for n in self.bank.adapters if n != self.PLACEHOLDER]

    def nbytes(self, name: str) -> int:
        return sum(t.nbytes for t in self.bank.adapter_tensors(name).values())

    def forward(self, input_ids, attention_mask, adapters, token_type_ids):
        return self.predictor.predict(input_ids, attention_mask, adapters, token_type_ids)


class MixedEngine(Engine):
    """Every row in one forward pass, each with its own adapter, through `BatchedAdapters`."""

    def __init__(self, base_model: str, device: str = "auto", dtype: str = "float32") -> None:
        super().__init__(base_model, device, dtype)
        from roberta_lora.adapters.batched import BatchedAdapters

        self.batched = BatchedAdapters(self._base())

    def add(self, name: str, directory: str | Path) -> AdapterConfig:
        self.batched.add(name, directory)
        return self.batched.config(name)

    def remove(self, name: str) -> None:
        self.batched.remove(name)

    @property
    def names(self) -> list[str]:
        return list(self.batched.names)

    def nbytes(self, name: str) -> int:
        return int(self.batched.nbytes(name))

    def forward(self, input_ids, attention_mask, adapters, token_type_ids):
        return self.batched.forward(input_ids, attention_mask, adapters, token_type_ids=token_type_ids)


def build_engine(kind: str, base_model: str, device: str = "auto", dtype: str = "float32") -> Engine:
    """"mixed" (`MixedEngine`) or "grouped" (`GroupedEngine`) on `device` in `dtype`."""
    if kind not in ("mixed", "grouped"):
        raise ConfigError(f"--engine {kind!r} is not one of 'mixed', 'grouped'")
    if kind == "mixed":
        return MixedEngine(base_model, device, dtype)
    return GroupedEngine(base_model, device, dtype)

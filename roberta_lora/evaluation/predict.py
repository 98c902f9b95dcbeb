"""Predictions from a saved adapter on raw text: labels with probabilities, scores, or answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roberta_lora.data.squad_features import prepare_eval_features
from roberta_lora.data.tasks import load_task
from roberta_lora.data.tokenizer import check_vocabulary, load_tokenizer
from roberta_lora.errors import ConfigError, DataError
from roberta_lora.evaluation.squad_postprocess import postprocess_predictions
from roberta_lora.model.config import AdapterConfig
from roberta_lora.model.wrapper import LoraWrapperRoberta


def adapter_limits(config: AdapterConfig) -> tuple[int, int]:
    """(max_length, doc_stride) to predict with: the adapter's, else its task's, else generic ones."""
    spec = None
    if config.task:
        try:
            spec = load_task(config.task)
        except ConfigError:  # a task file the user no longer has: fall back to generic limits
            spec = None
    default_length = spec.max_length if spec else (384 if config.task_type != "glue" else 512)
    return config.max_length or default_length, config.doc_stride or (spec.doc_stride if spec else None) or 128


def adapter_label_names(config: AdapterConfig) -> list[str]:
    """The adapter's class names, or "0", "1", ... when it recorded none."""
    return config.label_names or [str(i) for i in range(config.num_classes)]


class Predictor:
    """Loads an adapter (and its base) once and answers batches of texts.

    Args:
        adapter_dir: the adapter folder.
        model_id: the base model; defaults to the one recorded in the adapter.
        allow_base_mismatch: load even when the base fingerprint differs (warns).
        batch_size: examples per forward pass.
    """

    def __init__(self, adapter_dir: str | Path, model_id: str | None = None, allow_base_mismatch: bool = False,
                 batch_size: int = 32) -> None:
        self.model = LoraWrapperRoberta.from_adapter(adapter_dir, model_id=model_id,
                                                     allow_base_mismatch=allow_base_mismatch).eval()
        config = self.model.adapter_config
        self.tokenizer = load_tokenizer(str(model_id or config.base_model))
        check_vocabulary(self.tokenizer, self.model.config, str(model_id or config.base_model))
        self.batch_size = batch_size
        self.max_length, self.doc_stride = adapter_limits(config)
        self.label_names = adapter_label_names(config)

    @torch.inference_mode()
    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """GLUE: {"label", "score", "scores"} or {"score"} for regression. SQuAD: texts are questions,
        text_pairs contexts; returns {"answer", ...} ("" = no answer for v2)."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ConfigError(f"got {len(texts)} texts but {len(text_pairs)} text pairs; give one pair per text")
        if self.model.task_type != "glue":
            if text_pairs is None:
                raise ConfigError("a SQuAD adapter needs a question (--text) and a context (--text-pair) per example")
            return self._answer(texts, text_pairs)
        results: list[dict[str, Any]] = []
        for start in range(0, len(texts), self.batch_size):
            pair = text_pairs[start : start + self.batch_size] if text_pairs else None
            encoded = self.tokenizer(texts[start : start + self.batch_size], pair, truncation=True,
                                     max_length=self.max_length, padding=True, return_tensors="pt")
            logits = self.model(encoded["input_ids"], encoded["attention_mask"],
                                token_type_ids=encoded.get("token_type_ids")).logits.float()
            results.extend(describe_logits(row, self.label_names) for row in logits)
        return results

    def _answer(self, questions: list[str], contexts: list[str]) -> list[dict[str, Any]]:
        examples = {"id": [str(i) for i in range(len(questions))], "question": questions, "context": contexts,
                    "answers": [{"text": [], "answer_start": []} for _ in questions]}
        features = prepare_eval_features(examples, self.tokenizer, max_length=self.max_length,
                                         doc_stride=self.doc_stride)
        starts, ends = [], []
        for start in range(0, len(features["input_ids"]), self.batch_size):
            columns = [c for c in ("input_ids", "token_type_ids") if c in features]
            batch = self.tokenizer.pad({c: features[c][start : start + self.batch_size] for c in columns},
                                       return_tensors="pt")
            out = self.model(batch["input_ids"], batch["attention_mask"], token_type_ids=batch.get("token_type_ids"))
            starts.extend(row.float().numpy() for row in out.start_logits)
            ends.extend(row.float().numpy() for row in out.end_logits)
        rows = [dict(zip(examples, values, strict=True)) for values in zip(*examples.values(), strict=True)]
        answers = postprocess_predictions(rows, features, starts, ends,
                                          version_2=self.model.task_type == "squad_v2")
        return [{"answer": answers.predictions[qid], "null_odds": answers.null_odds.get(qid),
                 "nbest": answers.nbest[qid][:3]} for qid in examples["id"]]


def describe_logits(logits: torch.Tensor, label_names: list[str]) -> dict[str, Any]:
    """One example's answer from its head's logits: {"score"} for regression, else the best label, its
    probability and every label's (rounded to 6 places). `predict` and the server both answer with it."""
    if logits.numel() == 1:
        return {"score": round(float(logits[0]), 6)}
    probabilities = logits.softmax(-1).tolist()
    best = int(np.argmax(probabilities))
    return {"label": label_names[best], "score": round(probabilities[best], 6),
            "scores": {name: round(p, 6) for name, p in zip(label_names, probabilities, strict=True)}}


def read_input_file(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Texts from a file: JSON lines with "text" (+ "text_pair"; or "question" + "context"), else one text per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("input file does not exist; pass --input FILE with one example per line", str(path))
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
                        "re-save the file as UTF-8", str(path)) from None
    if not lines:
        raise DataError("the input file holds no text; put one example per line (or JSON lines with \"text\")",
                        str(path))
    if not path.suffix == ".jsonl":
        return lines, None
    texts, pairs = [], []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON ({error.msg})", str(path), number) from None
        if not isinstance(row, dict):
            raise DataError('expected a JSON object like {"text": "...", "text_pair": "..."}', str(path), number)
        text = row.get("text", row.get("question"))
        if text is None:
            raise DataError(f'missing "text" (or "question"); keys present: {sorted(row)[:10]}', str(path), number)
        if not isinstance(text, str):
            raise DataError(f'"text" is a {type(text).__name__}, expected a string', str(path), number)
        texts.append(text)
        pairs.append(row.get("text_pair", row.get("context")))
    if all(p is None for p in pairs):
        return texts, None
    if any(not isinstance(p, str) for p in pairs):
        raise DataError('either every line or no line has "text_pair" (or "context")', str(path))
    return texts, pairs

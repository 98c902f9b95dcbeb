"""Predictions from a saved adapter on raw text: labels with probabilities, scores, or answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roberta_lora.choices import has_visible_text
from roberta_lora.data.squad_features import prepare_eval_features
from roberta_lora.data.tasks import load_task
from roberta_lora.data.tokenizer import check_vocabulary, load_tokenizer
from roberta_lora.errors import ConfigError, DataError
from roberta_lora.evaluation.squad_postprocess import postprocess_predictions
from roberta_lora.model.config import AdapterConfig
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.runtime import resolve_device, resolve_dtype

# A str holding a surrogate code point cannot be encoded as UTF-8 (tokenizers refuse it): it comes from
# argv bytes that were not UTF-8 (Python decodes them to U+DC80-U+DCFF) or from half a JSON \u escape pair.
SURROGATE = re.compile(r"[\ud800-\udfff]")
LINE_END = re.compile(r"\r\n|\r|\n")


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
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N" (`runtime.resolve_device`).
        dtype: the weights' dtype, "float32", "bfloat16" or "float16" (CUDA only); the model is cast once,
            and the answers are computed from float32 copies of the logits.

    Raises:
        ConfigError: a device or dtype that is unknown or not available here, checked before the model loads.
    """

    def __init__(self, adapter_dir: str | Path, model_id: str | None = None, allow_base_mismatch: bool = False,
                 batch_size: int = 32, device: str | torch.device = "auto", dtype: str = "float32") -> None:
        self.device = resolve_device(str(device))
        self.dtype = resolve_dtype(dtype, self.device)
        model = LoraWrapperRoberta.from_adapter(adapter_dir, model_id=model_id, allow_base_mismatch=allow_base_mismatch)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
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
        for name, values in (("texts", texts), ("text_pairs", text_pairs or [])):
            for index, text in enumerate(values):
                if (problem := text_problem(text)) is not None:
                    raise ConfigError(f"{name}[{index}] {problem}; pass non-empty UTF-8 strings")
        if self.model.task_type != "glue":
            if text_pairs is None:
                raise ConfigError("a SQuAD adapter needs a question (--text) and a context (--text-pair) per example")
            return self._answer(texts, text_pairs)
        results: list[dict[str, Any]] = []
        for start in range(0, len(texts), self.batch_size):
            pair = text_pairs[start : start + self.batch_size] if text_pairs else None
            encoded = self.tokenizer(texts[start : start + self.batch_size], pair, truncation=True,
                                     max_length=self.max_length, padding=True, return_tensors="pt")
            encoded = encoded.to(self.device)
            logits = self.model(encoded["input_ids"], encoded["attention_mask"],
                                token_type_ids=encoded.get("token_type_ids")).logits.float().cpu()  # (B, C)
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
                                       return_tensors="pt").to(self.device)
            out = self.model(batch["input_ids"], batch["attention_mask"], token_type_ids=batch.get("token_type_ids"))
            starts.extend(row.numpy() for row in out.start_logits.float().cpu())  # each (T,)
            ends.extend(row.numpy() for row in out.end_logits.float().cpu())
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


def text_problem(text: object, from_argv: bool = False) -> str | None:
    """Why `text` cannot be one example's text, as a phrase to follow its name ("is empty"), or None when it can.

    Refused: a non-string, a string with no visible character (`choices.has_visible_text`: only whitespace,
    control or zero-width characters, so the model would see nothing but <s></s>), and a string holding a
    lone surrogate, which has no UTF-8 form (the tokenizer cannot take it).

    Args:
        from_argv: the text came from the command line, where Python turns each byte that is not UTF-8 into
            a surrogate U+DC80-U+DCFF; the phrase then names that byte.
    """
    if not isinstance(text, str):
        return f"is not a string (got the {type(text).__name__} {text!r:.40})"
    if not text:
        return "is empty"
    if not has_visible_text(text):
        return (f"holds nothing to read (only {len(text)} whitespace, control or zero-width "
                f"character{'s' if len(text) > 1 else ''})")
    surrogate = SURROGATE.search(text)
    if surrogate is None:
        return None
    code = ord(surrogate.group())
    byte = f", which stands for the byte 0x{code - 0xDC00:02x}" if from_argv and 0xDC80 <= code <= 0xDCFF else ""
    return f"is not valid UTF-8 text (a lone surrogate \\u{code:04x} at character {surrogate.start() + 1}{byte})"


def read_input_file(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Texts from a file: JSON lines with "text" (+ "text_pair"; or "question" + "context"), else one text per line.

    Blank lines are skipped; errors name the file's own line number.

    Raises:
        DataError: a missing or non-UTF-8 file, one with no text, a line with nothing to read, or a JSON line
            that is not an object whose "text" (and "text_pair") pass `text_problem`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("input file does not exist; pass --input FILE with one example per line", str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
                        "re-save the file as UTF-8", str(path)) from None
    # Lines end at \n, \r\n or \r only: str.splitlines would also cut at U+2028 or U+0085, which JSON allows
    # inside a string and which then count as lines of their own.
    numbered = [(number, line) for number, line in enumerate(LINE_END.split(text), 1) if line.strip()]
    if not numbered:
        raise DataError("the input file holds no text; put one example per line (or JSON lines with \"text\")",
                        str(path))
    if not path.suffix == ".jsonl":
        for number, line in numbered:  # blank lines are skipped; a line of control characters is a mistake
            if (problem := text_problem(line)) is not None:
                raise DataError(f"the line {problem}; put one text per line, or leave the line empty",
                                str(path), number)
        return [line for _, line in numbered], None
    texts, pairs = [], []
    for number, line in numbered:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON ({error.msg})", str(path), number) from None
        if not isinstance(row, dict):
            raise DataError('expected a JSON object like {"text": "...", "text_pair": "..."}', str(path), number)
        text_key = "text" if "text" in row else "question"
        pair_key = "text_pair" if "text_pair" in row else "context"
        text, pair = row.get(text_key), row.get(pair_key)
        if text is None:
            raise DataError(f'missing "text" (or "question"); keys present: {sorted(row)[:10]}', str(path), number)
        for key, value in ((text_key, text), (pair_key, pair)):
            if value is not None and (problem := text_problem(value)) is not None:
                fix = ("write the character itself, or both halves of its \\u escape pair"
                       if isinstance(value, str) and SURROGATE.search(value)
                       else f'give "{key}" a string with at least one non-space character')
                raise DataError(f'"{key}" {problem}; {fix}', str(path), number)
        texts.append(text)
        pairs.append(pair)
    if all(p is None for p in pairs):
        return texts, None
    if any(p is None for p in pairs):
        raise DataError('either every line or no line has "text_pair" (or "context")', str(path))
    return texts, pairs

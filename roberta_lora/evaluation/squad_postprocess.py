"""SQuAD v1.1 / v2.0 post-processing: per-window start/end logits -> one answer per question.

For every question, the n-best start and end tokens of each of its windows are paired into
spans that lie inside the context; the best-scoring span over all windows (score = start logit
+ end logit) is mapped back to context characters through the offset mapping. For v2 the span
competes with the null answer scored at `<s>`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roberta_lora.data.squad_features import NULL_INDEX, _column
from roberta_lora.errors import ConfigError
from roberta_lora.fileio import atomic_write_text

PLACEHOLDER_TEXT = "empty"  # n-best entry when a question has no valid span at all


@dataclass
class SquadPredictions:
    """Decoded answers, keyed by question id.

    predictions: the answer text ("" when v2 predicts no answer).
    nbest: up to n_best_size candidates, best first: text, probability, start_logit, end_logit.
    null_odds: v2 only, null score minus best span score (higher = more likely unanswerable).
    """

    predictions: dict[str, str] = field(default_factory=dict)
    nbest: dict[str, list[dict]] = field(default_factory=dict)
    null_odds: dict[str, float] = field(default_factory=dict)


def _window_candidates(
    context: str,
    offsets: Sequence,
    start: np.ndarray,
    end: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> list[dict]:
    """Valid spans among the n-best start and end tokens of one window."""
    top_starts = np.argsort(start)[::-1][:n_best_size]
    top_ends = np.argsort(end)[::-1][:n_best_size]
    out = []
    for s in top_starts:
        for e in top_ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            start_char, end_char = offsets[s][0], offsets[e][1]
            if end_char <= start_char:  # whitespace-only tokens: an empty span is the null answer's job
                continue
            out.append(
                {
                    "text": context[start_char:end_char],
                    "span": (start_char, end_char),
                    "score": float(start[s] + end[e]),
                    "start_logit": float(start[s]),
                    "end_logit": float(end[e]),
                }
            )
    return out


def _feature_logits(
    i: int, offsets: Sequence, start: Any, end: Any
) -> tuple[Sequence, np.ndarray, np.ndarray]:
    """One feature's offsets and its (start, end) logits cut to its own length."""
    start = np.asarray(start, dtype=np.float64)  # (seq_len_i or padded length,)
    end = np.asarray(end, dtype=np.float64)
    if start.shape[0] < len(offsets) or end.shape[0] < len(offsets):
        raise ConfigError(
            f"feature {i} has {len(offsets)} tokens but {start.shape[0]} start / {end.shape[0]} end "
            "logits; logits must cover every token of their feature (pad on the right)."
        )
    return offsets, start[: len(offsets)], end[: len(offsets)]  # drop batch padding


def _question_candidates(
    context: str,
    rows: list[tuple[Sequence, np.ndarray, np.ndarray]],
    n_best_size: int,
    max_answer_length: int,
) -> tuple[list[dict], dict]:
    """All valid spans of one question's windows (best first, deduplicated) and its null candidate."""
    spans: dict[tuple[int, int], dict] = {}
    null: dict = {"score": math.inf}
    for offsets, start, end in rows:
        null_score = float(start[NULL_INDEX] + end[NULL_INDEX])
        if null_score < null["score"]:
            null = {
                "text": "",
                "score": null_score,
                "start_logit": float(start[NULL_INDEX]),
                "end_logit": float(end[NULL_INDEX]),
            }
        # Overlapping windows propose the same span twice; keep it once, with its best score.
        for cand in _window_candidates(context, offsets, start, end, n_best_size, max_answer_length):
            if cand["span"] not in spans or cand["score"] > spans[cand["span"]]["score"]:
                spans[cand["span"]] = cand
    return sorted(spans.values(), key=lambda c: c["score"], reverse=True)[:n_best_size], null


def _with_probabilities(candidates: list[dict], n_best_size: int) -> list[dict]:
    """The n best candidates as JSON-ready dicts, with a softmax over their scores."""
    best = sorted(candidates, key=lambda c: c["score"], reverse=True)[:n_best_size]
    scores = np.array([c["score"] for c in best])
    probs = np.exp(scores - scores.max())  # shifted: exp never overflows
    probs /= probs.sum()
    return [
        {
            "text": c["text"],
            "probability": float(p),
            "start_logit": c["start_logit"],
            "end_logit": c["end_logit"],
        }
        for c, p in zip(best, probs, strict=True)
    ]


def postprocess_predictions(
    examples: Any,
    features: Any,
    start_logits: np.ndarray | Sequence[np.ndarray],
    end_logits: np.ndarray | Sequence[np.ndarray],
    *,
    version_2: bool,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
    output_dir: Path | None = None,
) -> SquadPredictions:
    """Turn per-window start/end logits into one answer text per question.

    Args:
        examples: the raw examples (`Dataset` or list of dicts) with `id` and `context`.
        features: the output of `prepare_eval_features` (`Dataset` or dict of lists), in the
            same order as the logits.
        start_logits, end_logits: one row per feature. Either an array (num_features, seq_len)
            padded on the right to any length >= each feature's length (padding values are
            ignored), or a list of 1-D arrays, one per feature, of varying lengths (dynamic
            padding: each batch, or each feature, has its own length).
        version_2: SQuAD v2: also consider "no answer" and fill `null_odds`.
        n_best_size: start and end tokens tried per window, and candidates kept per question.
        max_answer_length: longest answer in tokens.
        null_score_diff_threshold: v2 predicts "" when null score - best span score > this.
        output_dir: if given, write predictions.json, nbest_predictions.json (and v2
            null_odds.json) there.

    The null score of a question is the minimum over its windows of
    start_logits[0] + end_logits[0] (the `<s>` token): the window most confident that the
    answer is somewhere is the one that speaks for "no answer".
    """
    if n_best_size < 1 or max_answer_length < 1:
        raise ConfigError(
            f"n_best_size and max_answer_length must be >= 1; got {n_best_size} and {max_answer_length}."
        )
    example_ids = _column(features, "example_id")
    offset_mapping = _column(features, "offset_mapping")
    if not len(example_ids) == len(start_logits) == len(end_logits):
        raise ConfigError(
            f"got {len(example_ids)} features but {len(start_logits)} start and {len(end_logits)} end logit "
            "rows; pass one row per feature, in the order of the features."
        )
    windows: dict[str, list[int]] = {}
    for i, qid in enumerate(example_ids):
        windows.setdefault(qid, []).append(i)
    result = SquadPredictions()
    for qid, context in zip(_column(examples, "id"), _column(examples, "context"), strict=True):
        if qid not in windows:
            raise ConfigError(f"example {qid!r} has no features; build features from the same examples.")
        rows = [_feature_logits(i, offset_mapping[i], start_logits[i], end_logits[i]) for i in windows[qid]]
        spans, null = _question_candidates(context, rows, n_best_size, max_answer_length)
        # With no valid span anywhere the answer is "" (the placeholder text is never predicted).
        answer = spans[0]["text"] if spans else ""
        if not spans:
            spans = [{"text": PLACEHOLDER_TEXT, "score": 0.0, "start_logit": 0.0, "end_logit": 0.0}]
        if version_2:
            diff = null["score"] - spans[0]["score"]
            result.null_odds[qid] = diff
            if diff > null_score_diff_threshold:
                answer = ""
        result.predictions[qid] = answer
        result.nbest[qid] = _with_probabilities(spans + [null] if version_2 else spans, n_best_size)
    if output_dir is not None:
        write_predictions(result, Path(output_dir), version_2=version_2)
    return result


def _write_json(path: Path, data: Mapping) -> None:
    # allow_nan=False: inf/nan logits raise here instead of writing invalid JSON.
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))


def write_predictions(predictions: SquadPredictions, output_dir: Path, *, version_2: bool) -> None:
    """Write predictions.json, nbest_predictions.json and (v2) null_odds.json into `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(output_dir / "predictions.json", predictions.predictions)
    _write_json(output_dir / "nbest_predictions.json", predictions.nbest)
    if version_2:
        _write_json(output_dir / "null_odds.json", predictions.null_odds)

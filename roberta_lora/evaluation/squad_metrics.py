"""SQuAD v1.1 and v2.0 scoring with the numbers of the official evaluation scripts.

This is an independent implementation of the definitions in `evaluate-v1.1.py` and
`evaluate-v2.0.py` (rajpurkar/SQuAD-explorer). Scores are in percent, and they are
summed in the scripts' order (dataset order; na_prob order for the best threshold)
with the same arithmetic, so the floats should agree exactly, not only approximately.

Where the two scripts differ we follow each one:

* v1.1 F1 is 0 when the prediction and gold share no token, even if both normalise to
  nothing; v2.0 F1 is 1 when both are empty and 0 when only one is.
* v1.1 counts a question without a prediction as 0 (the script prints a message; we log
  one warning naming the missing ids). The v2.0 script stops with a KeyError on a
  missing prediction or na_prob, so we raise a ConfigError that lists them.
* v2.0 drops gold answers that normalise to empty; a question left with none is scored
  against [""] (only the empty prediction is right). HasAns/NoAns are decided from the
  raw `answers` list, as the script does.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from roberta_lora.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.

    The order matters and is the official one: "The-End" -> "theend" keeps its "the".
    """
    text = text.lower().translate(_PUNCTUATION_TABLE)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, gold: str) -> int:
    """1 when the two answers are equal after `normalize_answer`, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, *, squad_v2: bool = False) -> float:
    """Token-level F1 between two answers after `normalize_answer`.

    Args:
        prediction: the predicted answer text.
        gold: one gold answer text.
        squad_v2: use the v2.0 rule for empty answers (F1 = 1 if both are empty, 0 if
            only one is). The v1.1 rule gives 0 whenever no token is shared.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if squad_v2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    shared = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(pred_tokens)
    recall = shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _questions(dataset: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every question dict of the official nested structure, in file order."""
    for article in dataset:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def _first_ids(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def squad_v1_metrics(dataset: list[dict[str, Any]], predictions: Mapping[str, str]) -> dict[str, float]:
    """Score predictions as `evaluate-v1.1.py` does.

    Args:
        dataset: the official JSON's "data" list (articles -> paragraphs -> qas).
        predictions: question id -> predicted answer text. Ids not in the dataset are
            ignored; questions without a prediction score 0 and are logged.

    Returns:
        {"exact_match": ..., "f1": ...} in percent, averaged over every question.
    """
    exact_total = f1_total = 0.0
    count = 0
    missing: list[str] = []
    for qa in _questions(dataset):
        count += 1
        if qa["id"] not in predictions:
            missing.append(qa["id"])
            continue
        golds = [answer["text"] for answer in qa["answers"]]
        if not golds:
            raise DataError(
                f"question {qa['id']!r} has no gold answer; SQuAD v1.1 scoring needs at least "
                "one per question. Score unanswerable questions with squad_v2_metrics."
            )
        prediction = predictions[qa["id"]]
        exact_total += max(exact_match_score(prediction, gold) for gold in golds)
        f1_total += max(f1_score(prediction, gold) for gold in golds)
    if count == 0:
        raise DataError("the dataset holds no questions; expected articles -> paragraphs -> qas.")
    if missing:
        logger.warning(
            "%d unanswered question(s) will receive score 0: %s", len(missing), _first_ids(missing)
        )
    return {"exact_match": 100.0 * exact_total / count, "f1": 100.0 * f1_total / count}


def _v2_raw_scores(
    dataset: list[dict[str, Any]], predictions: Mapping[str, str]
) -> tuple[dict[str, int], dict[str, float], dict[str, bool]]:
    """Per-question exact and F1 before thresholding, and whether each question has an answer."""
    exact: dict[str, int] = {}
    f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    missing: list[str] = []
    for qa in _questions(dataset):
        qid = qa["id"]
        has_answer[qid] = bool(qa["answers"])
        golds = [answer["text"] for answer in qa["answers"] if normalize_answer(answer["text"])]
        golds = golds or [""]  # the only right answer to an unanswerable question is ""
        if qid not in predictions:
            missing.append(qid)
            continue
        exact[qid] = max(exact_match_score(predictions[qid], gold) for gold in golds)
        f1[qid] = max(f1_score(predictions[qid], gold, squad_v2=True) for gold in golds)
    if not has_answer:
        raise DataError("the dataset holds no questions; expected articles -> paragraphs -> qas.")
    if missing:
        raise ConfigError(
            f"{len(missing)} question(s) have no prediction: {_first_ids(missing)}. SQuAD v2.0 "
            'scores every question; predict "" for the ones the model finds unanswerable.'
        )
    return exact, f1, has_answer


def _summary(exact: Mapping[str, float], f1: Mapping[str, float], qids: list[str]) -> dict[str, float]:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / total,
        "f1": 100.0 * sum(f1[q] for q in qids) / total,
        "total": total,
    }


def _best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """Best score over na_prob thresholds, walked as the official find_best_thresh walks them.

    Start from "every question is predicted unanswerable" (one point per NoAns question),
    then admit questions in increasing na_prob order: a HasAns question adds its raw score,
    a NoAns question with a non-empty raw prediction loses its point. The running score is
    compared after each question, even inside a group of equal na_probs, so (like the
    official script) the best can sit between tied questions. Ties keep na_probs' order.
    """
    running = float(sum(1 for answerable in has_answer.values() if not answerable))
    best, best_thresh = running, 0.0
    for qid in sorted(na_probs, key=na_probs.__getitem__):
        if qid not in scores:
            continue
        if has_answer[qid]:
            running += scores[qid]
        elif predictions[qid]:  # a raw non-empty string, even "  ", counts as answering
            running -= 1
        if running > best:
            best, best_thresh = running, float(na_probs[qid])
    return 100.0 * best / len(scores), best_thresh


def squad_v2_metrics(
    dataset: list[dict[str, Any]],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """Score predictions as `evaluate-v2.0.py` does.

    Args:
        dataset: the official JSON's "data" list; unanswerable questions have "answers": [].
        predictions: question id -> predicted text, "" meaning "no answer". Every
            question needs one.
        na_probs: question id -> probability that the question has no answer. When
            given, a question with na_prob > na_prob_thresh counts as predicted
            unanswerable, and the best_* keys are added.
        na_prob_thresh: see na_probs (the official default is 1.0).

    Returns:
        "exact", "f1", "total", then "HasAns_*" and "NoAns_*" (each only when such
        questions exist), then "best_exact", "best_exact_thresh", "best_f1",
        "best_f1_thresh" when na_probs is given. Scores in percent.
    """
    exact_raw, f1_raw, has_answer = _v2_raw_scores(dataset, predictions)
    probs = na_probs if na_probs is not None else dict.fromkeys(predictions, 0.0)
    lacking = [qid for qid in exact_raw if qid not in probs]
    if lacking:
        raise ConfigError(
            f"na_probs has no value for {len(lacking)} question(s): {_first_ids(lacking)}; "
            "give a no-answer probability for every question id."
        )
    # Above the threshold the answer is replaced by "no answer": right iff there is none.
    exact = {q: float(not has_answer[q]) if probs[q] > na_prob_thresh else s for q, s in exact_raw.items()}
    f1 = {q: float(not has_answer[q]) if probs[q] > na_prob_thresh else s for q, s in f1_raw.items()}
    result = _summary(exact, f1, list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, answerable in has_answer.items() if answerable is wanted]
        if qids:
            result.update({f"{prefix}_{key}": value for key, value in _summary(exact, f1, qids).items()})
    if na_probs is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best, thresh = _best_threshold(predictions, raw, na_probs, has_answer)
            result[f"best_{name}"], result[f"best_{name}_thresh"] = best, thresh
    return result


def load_squad_json_for_scoring(path: str | Path) -> list[dict[str, Any]]:
    """Read an official SQuAD file (v1.1 or v2.0) and return its "data" list.

    Raises:
        DataError: naming the file, when it is not JSON or not the official nesting
            {"data": [{"paragraphs": [{"qas": [{"id", "answers": [{"text"}]}]}]}]}.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            content = json.load(handle)
    except OSError as error:
        raise DataError(f"cannot read the file ({error.strerror}).", path=str(path)) from error
    except json.JSONDecodeError as error:
        raise DataError(
            f"not valid JSON ({error.msg}); expected an official SQuAD file.",
            path=str(path),
            line=error.lineno,
        ) from error
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataError(
            f'expected the official SQuAD format {{"version": ..., "data": [articles]}}, found {found}. '
            "Predictions files ({id: text}) go in the predictions argument instead.",
            path=str(path),
        )
    for number, article in enumerate(content["data"]):
        problem = _structure_problem(article)
        if problem:
            raise DataError(f'article {number} of "data": {problem}', path=str(path))
    return content["data"]


def _structure_problem(article: Any) -> str | None:
    """What is wrong with one article of the official nesting, or None."""
    if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
        return 'expected {"title": ..., "paragraphs": [...]}.'
    for p_number, paragraph in enumerate(article["paragraphs"]):
        if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
            return f'paragraph {p_number} should be {{"context": ..., "qas": [...]}}.'
        for qa in paragraph["qas"]:
            answers = qa.get("answers") if isinstance(qa, dict) else None
            if not isinstance(qa, dict) or "id" not in qa or not isinstance(answers, list):
                return f'paragraph {p_number} has a question without "id" and an "answers" list.'
            if not all(
                isinstance(answer, dict) and isinstance(answer.get("text"), str) for answer in answers
            ):
                return f'question {qa["id"]!r} has an answer without a "text" string.'
    return None


def examples_to_squad_dataset(examples: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Turn Hugging Face style SQuAD rows into the official nested "data" list.

    Args:
        examples: rows with "id", "title", "context", "question" and
            "answers": {"text": [...], "answer_start": [...]} (empty lists when
            unanswerable). A `datasets.Dataset` works as it is.

    Returns:
        Articles grouped by title, paragraphs by context, in first-seen order, ready
        for `squad_v1_metrics` / `squad_v2_metrics`.
    """
    articles: dict[str, dict[str, Any]] = {}
    paragraphs: dict[tuple[str, str], dict[str, Any]] = {}
    for number, row in enumerate(examples):
        answers = row.get("answers")
        missing = [key for key in ("id", "title", "context", "question") if key not in row]
        if missing or not isinstance(answers, Mapping) or "text" not in answers:
            raise DataError(
                f"row {number} lacks {missing or ['answers']}; expected keys id, title, context, question "
                'and answers={"text": [...], "answer_start": [...]}.'
            )
        texts = list(answers["text"])
        starts = list(answers.get("answer_start", [-1] * len(texts)))  # scoring never reads starts
        if len(starts) != len(texts):
            raise DataError(
                f"row {number} (id {row['id']!r}) has {len(texts)} answer texts but {len(starts)} "
                "answer_start values; they must pair up."
            )
        title, context = row["title"], row["context"]
        if title not in articles:
            articles[title] = {"title": title, "paragraphs": []}
        if (title, context) not in paragraphs:
            paragraphs[title, context] = {"context": context, "qas": []}
            articles[title]["paragraphs"].append(paragraphs[title, context])
        paragraphs[title, context]["qas"].append(
            {
                "id": row["id"],
                "question": row["question"],
                "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=True)],
            }
        )
    return list(articles.values())

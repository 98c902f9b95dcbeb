"""Score a predictions file against gold data, as `roberta-lora score` does.

SQuAD takes exactly what the official evaluation scripts take (the dataset JSON, a JSON object
mapping question id to answer text, and for v2 an optional no-answer probability JSON) and gives
the same numbers. GLUE takes JSON lines ({"index": i, "prediction": label-or-score}) or a TSV
with a header `index<TAB>prediction` (the GLUE submission format); `index` is the 0-based row of
the gold split, labels may be given by id or by name.

A metric that has no finite value (the correlation of constant predictions) is NaN in
`score_predictions`; `score_with_notes` also says why, and `roberta-lora score` prints it as
`null` and exits 1.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from roberta_lora.data.glue_files import strict_float
from roberta_lora.data.readers import load_split
from roberta_lora.data.tasks import TaskSpec
from roberta_lora.errors import ConfigError, DataError
from roberta_lora.evaluation.metrics import compute_metrics
from roberta_lora.evaluation.squad_metrics import (
    load_squad_json_for_scoring,
    squad_v1_metrics,
    squad_v2_metrics,
)


def score_predictions(spec: TaskSpec, data: str | Path, predictions: str | Path, na_probs: str | Path | None = None,
                      split: str | None = None, na_prob_thresh: float = 1.0) -> dict[str, float]:
    """Metrics of a predictions file for `spec` (see the module docstring for the formats); a metric without a
    finite value is NaN (`score_with_notes` says why)."""
    return score_with_notes(spec, data, predictions, na_probs, split, na_prob_thresh)[0]


def score_with_notes(spec: TaskSpec, data: str | Path, predictions: str | Path, na_probs: str | Path | None = None,
                     split: str | None = None, na_prob_thresh: float = 1.0) -> tuple[dict[str, float], dict[str, str]]:
    """`score_predictions`, and for each metric that is not a finite number why not (e.g. "every prediction is
    2.5: constant predictions have no correlation"); the second dict is empty when every metric is finite."""
    if spec.kind == "squad":
        dataset = load_squad_json_for_scoring(data)
        answers = _read_json_object(predictions, "predictions")
        _check_some_ids_match(dataset, answers, predictions, data)
        if spec.squad_version == 2:
            probabilities = _read_json_object(na_probs, "no-answer probabilities") if na_probs else None
            metrics = squad_v2_metrics(dataset, answers, na_probs=probabilities, na_prob_thresh=na_prob_thresh)
        else:
            metrics = squad_v1_metrics(dataset, answers)
        return metrics, {name: "the official script gives no number for these predictions"
                         for name in _not_finite(metrics)}
    if na_probs:
        raise ConfigError("--na-probs applies to SQuAD v2 only")
    gold = load_split(spec, split or spec.validation_splits[0], data)
    references = np.asarray(gold[spec.label_column])
    predicted = _read_glue_predictions(Path(predictions), spec, len(references))
    with warnings.catch_warnings():  # scipy's ConstantInputWarning and the like: the notes below say it in one line
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = compute_metrics(spec.metrics, predicted, references)
    return metrics, {name: _why_not_finite(predicted, references) for name in _not_finite(metrics)}


def _not_finite(metrics: dict[str, Any]) -> list[str]:
    return [name for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)]


def _why_not_finite(predicted: np.ndarray, references: np.ndarray) -> str:
    """Why a GLUE metric (in practice a correlation: the others are always defined) has no value."""
    if len(predicted) < 2:
        return f"the split has {len(predicted)} row, and a correlation needs at least two"
    if np.all(predicted == predicted[0]):
        return (f"every prediction is {predicted[0]:g}, and constant predictions have no correlation; check that the "
                "model did not collapse to one output")
    if np.all(references == references[0]):
        return f"every gold value of the split is {references[0]:g}, and a constant has no correlation"
    return "the metric is not defined for these predictions"


def _check_some_ids_match(dataset: Any, answers: dict[str, Any], predictions: str | Path, data: str | Path) -> None:
    """Some predictions may be missing (the official scripts score them 0 and warn); none matching at all
    means the predictions belong to another dataset, which would silently score 0."""
    ids = {qa["id"] for article in dataset for paragraph in article["paragraphs"] for qa in paragraph["qas"]}
    if answers and not ids & set(answers):
        example = next(iter(answers))
        raise DataError(f"none of its {len(answers)} question ids is in {data} (e.g. {example[:60]!r}); are the "
                        "predictions for another dataset or split?", str(predictions))


def _read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} file does not exist", str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{what} file is not valid UTF-8 JSON ({error})", str(path)) from None
    if not isinstance(data, dict):
        raise DataError(f"{what} file must hold one JSON object mapping question id to value", str(path))
    return data


def _read_glue_predictions(path: Path, spec: TaskSpec, count: int) -> np.ndarray:
    if not path.is_file():
        raise DataError("predictions file does not exist", str(path))
    rows: list[tuple[int, Any, int]] = []  # (index, prediction, line)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".tsv", ".txt"):
        reader = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["index", "prediction"]:
            raise DataError(f"expected the header 'index<TAB>prediction', got {header}", str(path), 1)
        for number, fields in enumerate(reader, start=2):
            if len(fields) < 2:
                raise DataError(f"expected 2 tab-separated fields, got {len(fields)}", str(path), number)
            rows.append((_as_index(fields[0], path, number), fields[1], number))
    else:
        for number, record in _json_records(text, path):
            if not isinstance(record, dict) or "prediction" not in record or "index" not in record:
                raise DataError('expected {"index": <row>, "prediction": <label or score>}', str(path), number)
            rows.append((_as_index(record["index"], path, number), record["prediction"], number))
    values = np.full(count, np.nan)
    seen: dict[int, int] = {}
    for index, prediction, number in rows:
        if not 0 <= index < count:
            raise DataError(f"index {index} is outside the gold split (0..{count - 1})", str(path), number)
        if index in seen:
            raise DataError(f"index {index} is predicted twice (first on line {seen[index]})", str(path), number)
        seen[index] = number
        values[index] = _as_label(prediction, spec, path, number)
    if len(seen) != count:
        missing = sorted(set(range(count)) - set(seen))
        raise DataError(f"{count - len(seen)} of {count} rows have no prediction (first missing index "
                        f"{missing[0]}); predict every row of the split", str(path))
    return values if spec.kind == "regression" else values.astype(int)


def _json_records(text: str, path: Path) -> list[tuple[int, Any]]:
    """(line, record) pairs from JSON lines, or from one JSON document holding a list of records
    (a pretty-printed file, or {"predictions": [...]}); the line is the record's number there."""
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # not one document: read it as JSON lines below
        if isinstance(document, dict) and isinstance(document.get("predictions"), list):
            document = document["predictions"]
        if isinstance(document, list):
            return list(enumerate(document, start=1))
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON lines ({error.msg}); expected one {{\"index\": i, \"prediction\": p}} "
                            "object per line, or one JSON list of them", str(path), number) from None
    return records


_WHOLE_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*")  # ASCII digits: not "1_0" (which int() reads as 10), "²" or "١"


def _whole_number(value: Any) -> int | None:
    """An integer given as a JSON integer, an integral JSON number (3.0) or a TSV field ("3"); else None.
    Booleans are not numbers here (Python's int(True) is 1), nor are 0.5 or "1_0"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value):
        return int(value)
    return None


def _as_index(value: Any, path: Path, line: int) -> int:
    index = _whole_number(value)
    if index is None:
        raise DataError(f"index {value!r:.60} is not a row number; expected an integer such as 3 (the 0-based row "
                        "of the gold split)", str(path), line)
    return index


def _as_label(value: Any, spec: TaskSpec, path: Path, line: int) -> float:
    if spec.kind == "regression":
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if math.isfinite(value) else None
        elif isinstance(value, str):
            number = strict_float(value)
        if number is None:
            raise DataError(f"prediction {value!r:.60} is not a finite number; expected a score such as 3.8 "
                            "(STS-B scores are 0..5)", str(path), line)
        return number
    if isinstance(value, str) and value in spec.label_names:
        return spec.label_names.index(value)
    label = _whole_number(value)
    if label is None or not 0 <= label < len(spec.label_names):
        kind = " (a JSON boolean, not a label)" if isinstance(value, bool) else ""
        raise DataError(f"prediction {value!r:.60}{kind} is not a label of {spec.name}; expected one of "
                        f"{list(spec.label_names)} or 0..{len(spec.label_names) - 1}", str(path), line)
    return label

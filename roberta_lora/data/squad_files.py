"""Read SQuAD v1.1 / v2.0 files into a `datasets.Dataset` with the hub's features.

Accepted formats:
- the official nested JSON (`{"version", "data": [{"title", "paragraphs": [{"context",
  "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}`);
- HF-style rows (`.jsonl`, a `.json` written by `Dataset.to_json`, or `.parquet`) with
  columns id, title, context, question, answers = {"text": [...], "answer_start": [...]}.

Every gold answer is checked to sit at its `answer_start` in the context: training targets
are built from these offsets, so a wrong one would silently teach the wrong span.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roberta_lora.choices import has_visible_text
from roberta_lora.data.glue_files import read_text_file
from roberta_lora.errors import DataError

if TYPE_CHECKING:
    import datasets

SQUAD_COLUMNS = ("id", "title", "context", "question", "answers")

# (record, where) pairs: `where` is a JSON path or "line N", used in error messages.
_Record = tuple[dict[str, Any], str, int | None]


def squad_features() -> datasets.Features:
    """The hub's SQuAD features (rajpurkar/squad and rajpurkar/squad_v2)."""
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(
                {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
            ),
        }
    )


def read_squad_file(path: str | Path, version: int | None = None) -> datasets.Dataset:
    """Read and validate a SQuAD file.

    Args:
        path: official JSON, HF-style .jsonl/.json rows, or .parquet.
        version: 1 to reject unanswerable questions (a v2.0 file given to a v1.1 task),
            2 to allow them, None to accept either.

    Raises:
        DataError: naming the file and the article/paragraph/question (or line), for bad
            UTF-8, bad JSON, missing fields, an answer not found at its answer_start, or a
            duplicate question id.
    """
    import datasets

    path = Path(path)
    if not path.is_file():
        raise DataError(
            "SQuAD file not found; expected the official train-v1.1.json / dev-v1.1.json "
            "(or train-v2.0.json / dev-v2.0.json), a .jsonl or a .parquet file.",
            str(path),
        )
    columns: dict[str, list] = {name: [] for name in SQUAD_COLUMNS}
    seen: dict[str, str] = {}
    for record, where, line in _records(path):
        row = _validated_row(record, where, line, path, version)
        if row["id"] in seen:
            raise DataError(
                f"question id {row['id']!r} at {where} was already used at {seen[row['id']]}; "
                "ids must be unique because predictions are keyed by id.",
                str(path),
                line,
            )
        seen[row["id"]] = where
        for name in SQUAD_COLUMNS:
            columns[name].append(row[name])
    if not seen:
        raise DataError("no questions found; expected data -> paragraphs -> qas.", str(path))
    return datasets.Dataset.from_dict(columns, features=squad_features())


def _records(path: Path) -> Iterator[_Record]:
    """Yield flat HF-style records from any accepted format."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for n, record in enumerate(pq.read_table(path).to_pylist()):
            yield record, f"row {n}", None
        return
    text = read_text_file(path)
    if path.suffix.lower() != ".jsonl":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data": one object per line, i.e. JSON lines
                raise DataError(f"not valid JSON: {err.msg} (column {err.colno}).", str(path), err.lineno) from err
        else:
            if isinstance(document, dict) and "data" not in document and "id" in document:
                yield document, "line 1", 1  # a JSON-lines file holding a single row
            else:
                yield from _official_records(document, path)
            return
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not a JSON object: {err.msg} (column {err.colno}).", str(path), line_no) from err
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object per line, got {type(record).__name__}.", str(path), line_no)
        yield record, f"line {line_no}", line_no


def _official_records(document: Any, path: Path) -> Iterator[_Record]:
    """Flatten the official nesting, checking each level's fields."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(
            'expected the official SQuAD layout {"version": ..., "data": [articles]} at the top level '
            "(or one HF-style row per line).",
            str(path),
        )

    def need(obj: Any, key: str, kind: type, where: str) -> Any:
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, kind):
            found = "missing" if not isinstance(obj, dict) or key not in obj else f"a {type(value).__name__}"
            raise DataError(f"{where}.{key} is {found}; expected a {kind.__name__}.", str(path))
        return value

    for a, article in enumerate(document["data"]):
        title = need(article, "title", str, f"data[{a}]")
        for p, paragraph in enumerate(need(article, "paragraphs", list, f"data[{a}] ({title!r})")):
            where_p = f"data[{a}].paragraphs[{p}]"
            context = need(paragraph, "context", str, where_p)
            for q, qa in enumerate(need(paragraph, "qas", list, where_p)):
                where = f"{where_p}.qas[{q}]"
                qid = qa.get("id") if isinstance(qa, dict) else None
                where_q = f"{where} (id {qid!r})" if qid else where
                answers = need(qa, "answers", list, where_q)
                for i, answer in enumerate(answers):
                    need(answer, "text", str, f"{where_q}.answers[{i}]")
                    need(answer, "answer_start", int, f"{where_q}.answers[{i}]")
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataError(f"{where_q}: is_impossible = {impossible!r:.40}; expected true or false "
                                    "(a JSON boolean, not a string)", str(path))
                if impossible is False and "is_impossible" in qa and not answers:
                    raise DataError(
                        f"{where_q} has is_impossible = false but no answers; give the answer span, or set "
                        "is_impossible = true for an unanswerable question.",
                        str(path),
                    )
                if impossible and answers:
                    raise DataError(
                        f"{where_q} has is_impossible = true but {len(answers)} answer(s); "
                        "unanswerable questions need \"answers\": [] (keep spans in plausible_answers).",
                        str(path),
                    )
                record = {
                    "id": need(qa, "id", str, where),
                    "title": title,
                    "context": context,
                    "question": need(qa, "question", str, where_q),
                    "answers": {
                        "text": [ans["text"] for ans in answers],
                        "answer_start": [ans["answer_start"] for ans in answers],
                    },
                }
                yield record, where_q, None


def _validated_row(
    record: dict[str, Any], where: str, line: int | None, path: Path, version: int | None
) -> dict[str, Any]:
    """Check one flat record's fields and answer offsets; return it with plain types."""
    missing = [name for name in SQUAD_COLUMNS if name not in record]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {missing}; expected {list(SQUAD_COLUMNS)}.", str(path), line
        )
    for name in ("id", "context", "question"):
        if not isinstance(record[name], str) or not has_visible_text(record[name]):
            raise DataError(f"{where}: field {name!r} is {record[name]!r:.80}; expected a non-empty string (not only "
                            "whitespace, control or zero-width characters).", str(path), line)
    answers = record["answers"]
    texts = answers.get("text") if isinstance(answers, dict) else None
    starts = answers.get("answer_start") if isinstance(answers, dict) else None
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(
            f"{where}: answers = {answers!r}; expected {{'text': [...], 'answer_start': [...]}} of equal length.",
            str(path),
            line,
        )
    qid, context = record["id"], record["context"]
    if not texts and version == 1:
        raise DataError(
            f"{where}: question {qid!r} has no answer, but SQuAD v1.1 questions all have one. "
            "This looks like a SQuAD v2.0 file: use the squad_v2 task.",
            str(path),
            line,
        )
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise DataError(
                f"{where}: question {qid!r} has answer text {text!r} at {start!r}; expected a non-empty "
                "string and a non-negative integer answer_start.",
                str(path),
                line,
            )
        found = context[start : start + len(text)]
        if found != text:
            at = context.find(text)
            hint = f"the text occurs at offset {at}" if at >= 0 else "the text does not occur in the context at all"
            raise DataError(
                f"{where}: answer of question {qid!r} is {text!r} but the context at answer_start={start} "
                f"reads {found!r} ({hint}). Fix answer_start (a character offset into the context).",
                str(path),
                line,
            )
    if not isinstance(record["title"], str):
        raise DataError(f"{where}: title is {record['title']!r}; expected a string (may be empty).", str(path), line)
    return {"id": qid, "title": record["title"], "context": context, "question": record["question"],
            "answers": {"text": list(texts), "answer_start": list(starts)}}

"""Malformed data files, table-driven, for every supported layout.

Each case writes a small file in the real layout (tests/fixtures_glue.py), breaks it one way and
loads it through `roberta_lora.data.load_split` / `read_local_file`. Every case must end in a
`DataError` whose message names the file and the line (`path:LINE:`), or the record's JSON path
for the official (usually single-line) SQuAD JSON; or, where the format documents it, in a
logged skip with its count (QQP's malformed rows, blank lines).

GLUE: GLUE_KINDS (14 kinds) x 9 layouts; SQuAD: SQUAD_KINDS (official JSON) + JSONL_KINDS.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from roberta_lora.data.glue_files import GLUE_LAYOUTS
from roberta_lora.data.readers import load_split, read_local_file
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import DataError

from fixtures_glue import TASK_DIRS, glue_rows, squad_document

N_ROWS = 6


@dataclass
class Expect:
    """An error at `line` (None: the file as a whole) matching `match`, or (QQP) `skipped` malformed lines
    / `kept_empty` rows with an empty question, logged, leaving `rows` examples."""

    line: int | None = None
    match: str = ""
    skipped: int = 0
    kept_empty: int = 0
    rows: int = N_ROWS - 1


@dataclass
class Table:
    task: str
    header: list[str] | None
    rows: list[list[str]]
    bom: bool

    @property
    def first(self) -> int:
        """The file line of rows[0]."""
        return 2 if self.header else 1

    def position(self, column: str | int) -> int:
        return column if isinstance(column, int) else self.header.index(column)

    @property
    def text(self) -> int:
        return self.position(next(iter(GLUE_LAYOUTS[self.task].text_columns.values())))

    @property
    def label(self) -> int:
        return self.position(GLUE_LAYOUTS[self.task].label)

    @property
    def lenient(self) -> bool:
        return GLUE_LAYOUTS[self.task].lenient

    def lines(self) -> list[str]:
        return (["\t".join(self.header)] if self.header else []) + ["\t".join(r) for r in self.rows]

    def render(self, lines: list[str] | None = None) -> bytes:
        text = "\n".join(self.lines() if lines is None else lines) + "\n"
        return ("\ufeff" if self.bom else "").encode() + text.encode("utf-8")


def table(task: str) -> Table:
    header, rows, bom = glue_rows(task, N_ROWS)
    return Table(task, header, [[str(v) for v in r] for r in rows], bom)


def malformed_row(t: Table, line: int, rows: int = N_ROWS - 1) -> Expect:
    return Expect(skipped=1, rows=rows) if t.lenient else Expect(line, "tab-separated fields")


# ----------------------------------------------------------------------------- GLUE kinds
def missing_label_column(t: Table) -> tuple[bytes, Expect]:
    if t.header is None:  # CoLA has no header: a row without its label field
        t.rows = [r[:1] + r[2:] for r in t.rows]
        return t.render(), Expect(1, "expected 4 tab-separated fields")
    t.header = [h for h in t.header if h != GLUE_LAYOUTS[t.task].label]
    return t.render(), Expect(1, "header lacks column")


def renamed_text_column(t: Table) -> tuple[bytes, Expect]:
    if t.header is None:  # CoLA given a header line: its "label" field is not a label
        return t.render(["source\tlabel\tmark\tsentence", *t.lines()]), Expect(1, "unknown label 'label'")
    t.header[t.text] = "text"
    return t.render(), Expect(1, "header lacks column")


def extra_field(t: Table) -> tuple[bytes, Expect]:
    t.rows[2].append("extra")
    return t.render(), malformed_row(t, t.first + 2)


def missing_field(t: Table) -> tuple[bytes, Expect]:
    t.rows[2].pop()
    return t.render(), malformed_row(t, t.first + 2)


def tab_inside_text(t: Table) -> tuple[bytes, Expect]:
    t.rows[1][t.text] = t.rows[1][t.text].replace(" ", "\t", 1)
    return t.render(), malformed_row(t, t.first + 1)


def line_break_in_quoted_text(t: Table) -> tuple[bytes, Expect]:
    """CSV-style quoting is not part of the format: a quoted line break still ends the row."""
    text = t.rows[1][t.text]
    t.rows[1][t.text] = f'"{text[:10]}\n{text[10:]}"'
    width = len(t.rows[0])
    bad = t.first + 1 if t.text != width - 1 else t.first + 2  # the first of the two pieces with a wrong count
    return t.render(), Expect(skipped=2) if t.lenient else Expect(bad, "tab-separated fields")


def unknown_label(t: Table) -> tuple[bytes, Expect]:
    regression = GLUE_LAYOUTS[t.task].regression
    t.rows[3][t.label] = "high" if regression else "maybe"
    return t.render(), Expect(t.first + 3, "is not a number" if regression else "unknown label 'maybe'")


def label_out_of_range(t: Table) -> tuple[bytes, Expect]:
    regression = GLUE_LAYOUTS[t.task].regression
    t.rows[3][t.label] = "5.5" if regression else "7"
    return t.render(), Expect(t.first + 3, "outside the task's range" if regression else "unknown label '7'")


def empty_label(t: Table) -> tuple[bytes, Expect]:
    t.rows[3][t.label] = ""
    return t.render(), Expect(t.first + 3, "is not a number" if GLUE_LAYOUTS[t.task].regression else "unknown label")


def empty_text(t: Table) -> tuple[bytes, Expect]:
    t.rows[1][t.text] = ""
    return t.render(), Expect(kept_empty=1, rows=N_ROWS) if t.lenient else Expect(t.first + 1, "empty .* text")


def whitespace_line_after_blank_line(t: Table) -> tuple[bytes, Expect]:
    """A blank line holds no row (skipped, as after the final newline); the line count must still be right."""
    lines = t.lines()
    at = t.first  # 0-based index of rows[1]: a blank line goes before it
    lines = lines[:at] + [""] + lines[at : at + 2] + ["   "] + lines[at + 2 :]
    return t.render(lines), malformed_row(t, t.first + 4, rows=N_ROWS)


def invalid_utf8(t: Table) -> tuple[bytes, Expect]:
    data = t.render()
    line_start = data.index(("\t".join(t.rows[2])).encode())
    return data[:line_start] + b"\xff" + data[line_start + 1 :], Expect(t.first + 2, "not valid UTF-8")


def latin1_file(t: Table) -> tuple[bytes, Expect]:
    t.rows[4][t.text] = "Caf\u00e9 " + t.rows[4][t.text]
    return "\n".join(t.lines()).encode("latin-1") + b"\n", Expect(t.first + 4, "not valid UTF-8")


def no_data_rows(t: Table) -> tuple[bytes, Expect]:
    t.rows = []
    return (t.render() if t.header else b""), Expect(None, "no data rows")


GLUE_KINDS: dict[str, Callable[[Table], tuple[bytes, Expect]]] = {f.__name__: f for f in [
    missing_label_column, renamed_text_column, extra_field, missing_field, tab_inside_text, line_break_in_quoted_text,
    unknown_label, label_out_of_range, empty_label, empty_text, whitespace_line_after_blank_line, invalid_utf8,
    latin1_file, no_data_rows,
]}


@pytest.mark.parametrize("kind", GLUE_KINDS)
@pytest.mark.parametrize("task", TASK_DIRS)
def test_malformed_glue_tsv(task, kind, tmp_path, caplog) -> None:
    spec = load_task(task)
    data, expect = GLUE_KINDS[kind](table(task))
    path = tmp_path / spec.local_files["train"]
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    if expect.skipped or expect.kept_empty:
        with caplog.at_level(logging.WARNING, logger="roberta_lora"):
            dataset = load_split(spec, "train", tmp_path)
        what = f"skipped {expect.skipped} malformed row" if expect.skipped else f"kept {expect.kept_empty} row(s) with an empty"
        assert what in caplog.text and str(path) in caplog.text
        assert len(dataset) == expect.rows
        return
    with pytest.raises(DataError, match=expect.match) as error:
        load_split(spec, "train", tmp_path)
    location = f"{path}:{expect.line}: " if expect.line is not None else f"{path}: "
    assert str(error.value).startswith(location), str(error.value)
    assert (error.value.path, error.value.line) == (str(path), expect.line)


def test_a_missing_glue_file_lists_what_was_tried(tmp_path) -> None:
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.csv").write_text("sentence,label\n")
    with pytest.raises(DataError, match=r"no sst2 'train' file found; tried .*SST-2/train.tsv.*holds: SST-2"):
        load_split(load_task("sst2"), "train", tmp_path)


# ----------------------------------------------------------------------------- SQuAD
def qa(doc: dict, q: int = 1) -> dict:
    return doc["data"][0]["paragraphs"][0]["qas"][q]


def answer(doc: dict, q: int = 1) -> dict:
    return qa(doc, q)["answers"][0]


def edit(change: Callable[[dict], object]) -> Callable[[dict], dict]:
    def apply(doc: dict) -> dict:
        doc = copy.deepcopy(doc)
        change(doc)
        return doc
    return apply


QAS = "data[0].paragraphs[0].qas[1]"
# kind -> (version, make the JSON document or raw bytes from a valid one, expected location, message)
SQUAD_KINDS: dict[str, tuple[int, Callable[[dict], dict | bytes], str, str]] = {
    "no_data": (1, lambda d: {"version": "1.1"}, "", "official SQuAD layout"),
    "data_not_a_list": (1, lambda d: {"version": "1.1", "data": {"0": d["data"][0]}}, "", "official SQuAD layout"),
    "top_level_list": (1, lambda d: d["data"], "", "official SQuAD layout"),
    "article_without_title": (1, edit(lambda d: d["data"][0].pop("title")), "data[0].title", "is missing"),
    "no_paragraphs": (1, edit(lambda d: d["data"][0].pop("paragraphs")), "data[0]", "paragraphs is missing"),
    "context_not_a_string": (1, edit(lambda d: d["data"][0]["paragraphs"][0].update(context=["x"])),
                             "data[0].paragraphs[0].context", "is a list"),
    "no_qas": (1, edit(lambda d: d["data"][0]["paragraphs"][0].pop("qas")), "data[0].paragraphs[0].qas", "missing"),
    "question_without_id": (1, edit(lambda d: qa(d).pop("id")), f"{QAS}.id", "is missing"),
    "question_without_text": (1, edit(lambda d: qa(d).pop("question")), f"{QAS} (id 'q0_0_1').question", "missing"),
    "empty_question": (1, edit(lambda d: qa(d).update(question="  ")), QAS, "field 'question' is '  '"),
    "no_answers_field": (1, edit(lambda d: qa(d).pop("answers")), f"{QAS} (id 'q0_0_1').answers", "missing"),
    "answer_without_text": (1, edit(lambda d: answer(d).pop("text")), f"{QAS} (id 'q0_0_1').answers[0].text", "missing"),
    "answer_start_as_string": (1, edit(lambda d: answer(d).update(answer_start=str(answer(d)["answer_start"]))),
                               "answers[0].answer_start", "is a str"),
    "answer_start_off_by_one": (1, edit(lambda d: answer(d).update(answer_start=answer(d)["answer_start"] + 1)),
                                QAS, "Fix answer_start"),
    "answer_start_past_the_context": (1, edit(lambda d: answer(d).update(answer_start=10**6)), QAS, "reads ''"),
    "answer_not_in_context": (1, edit(lambda d: answer(d).update(text="zebra crossing")), QAS, "does not occur"),
    "empty_answer_text": (1, edit(lambda d: answer(d).update(text="")), QAS, "expected a non-empty string"),
    "duplicate_id": (1, edit(lambda d: qa(d).update(id=qa(d, 0)["id"])), QAS, "was already used"),
    "unanswerable_in_v1": (1, edit(lambda d: qa(d).update(answers=[])), QAS, "looks like a SQuAD v2.0 file"),
    "impossible_with_answers_v2": (2, edit(lambda d: qa(d, 2).update(answers=qa(d, 2)["plausible_answers"])),
                                   "data[0].paragraphs[0].qas[2]", "is_impossible = true but 1 answer"),
    "invalid_utf8": (1, lambda d: json.dumps(d, indent=1).replace("Question 1", "Question \x00").encode()
                     .replace(b"\x00", b"\xff"), ":", "not valid UTF-8"),
    "truncated_json": (1, lambda d: json.dumps(d, indent=1).encode()[:-40], ":", "not valid JSON"),
    "empty_file": (1, lambda d: b"", ":1:", "not valid JSON"),
}


def jsonl_rows(version: int = 1) -> list[dict]:
    doc = squad_document(version, 1, 1, 3)
    paragraph = doc["data"][0]["paragraphs"][0]
    return [{"id": q["id"], "title": "Article_0", "context": paragraph["context"], "question": q["question"],
             "answers": {"text": [a["text"] for a in q["answers"]], "answer_start": [a["answer_start"] for a in q["answers"]]}}
            for q in paragraph["qas"]]


def jsonl(rows: list, blank_after_first: bool = True) -> bytes:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    if blank_after_first:
        lines.insert(1, "")  # a blank line is skipped, but still counts for the line numbers
    return ("\n".join(lines) + "\n").encode()


def jsonl_edit(index: int, change: Callable[[dict], object]) -> bytes:
    rows = jsonl_rows()
    change(rows[index])
    return jsonl(rows)


# kind -> (bytes of a .jsonl file, expected line, message); row 2 (index 2) is on line 4 after the blank line.
JSONL_KINDS: dict[str, tuple[bytes, int, str]] = {
    "line_not_json": (jsonl([*jsonl_rows()[:2], "{not json", jsonl_rows()[2]]), 4, "not a JSON object"),
    "line_is_a_list": (jsonl([*jsonl_rows()[:2], "[1, 2]"]), 4, "expected a JSON object per line"),
    "missing_field": (jsonl_edit(2, lambda r: r.pop("context")), 4, r"missing field\(s\) \['context'\]"),
    "wrong_offset": (jsonl_edit(2, lambda r: r["answers"]["answer_start"].__setitem__(0, 1)), 4, "Fix answer_start"),
    "unequal_answer_lists": (jsonl_edit(2, lambda r: r["answers"]["answer_start"].append(0)), 4, "of equal length"),
    "answers_not_an_object": (jsonl_edit(2, lambda r: r.update(answers="Paris")), 4, "expected {'text'"),
    "float_offset": (jsonl_edit(2, lambda r: r["answers"]["answer_start"].__setitem__(0, 0.0)), 4, "integer answer_start"),
}


@pytest.mark.parametrize("kind", SQUAD_KINDS)
def test_malformed_squad_json(kind, tmp_path) -> None:
    version, make, location, match = SQUAD_KINDS[kind]
    spec = load_task(f"squad_v{version}")
    content = make(squad_document(version, 1, 1, 3))
    path = tmp_path / "dev.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(DataError, match=match) as error:
        read_local_file(spec, path)
    message = str(error.value)
    assert message.startswith(str(path)), message
    if location == ":":  # a syntax or encoding error: the exact line of the file
        assert error.value.line is not None and f"{path}:{error.value.line}: " in message
    else:
        assert location in message, message


@pytest.mark.parametrize("kind", JSONL_KINDS)
def test_malformed_squad_jsonl(kind, tmp_path) -> None:
    content, line, match = JSONL_KINDS[kind]
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as error:
        read_local_file(load_task("squad_v2"), path)
    assert str(error.value).startswith(f"{path}:{line}: "), str(error.value)


def test_the_valid_files_behind_every_case_load(tmp_path) -> None:
    """The unbroken versions load, so each failure above is caused by its one change."""
    for task in TASK_DIRS:
        spec = load_task(task)
        path = tmp_path / spec.local_files["train"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(table(task).render())
        assert len(load_split(spec, "train", tmp_path)) == N_ROWS
    for version in (1, 2):
        path = tmp_path / f"v{version}.json"
        path.write_text(json.dumps(squad_document(version, 1, 1, 3)))
        assert len(read_local_file(load_task(f"squad_v{version}"), path)) == 3
    path = tmp_path / "rows.jsonl"
    path.write_bytes(jsonl(jsonl_rows()))
    assert len(read_local_file(load_task("squad_v2"), path)) == 3


def test_negative_answer_start_is_refused(tmp_path) -> None:
    doc = squad_document(1, 1, 1, 1)
    context = doc["data"][0]["paragraphs"][0]["context"]
    first = doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]
    assert first["answer_start"] == 0
    first["answer_start"] = -len(context)  # context[-len:-len + n] is the first n characters: a "match"
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="answer_start"):
        read_local_file(load_task("squad_v1"), path)


def test_kinds_tried() -> None:
    """The counts docs/reliability.md quotes."""
    assert len(GLUE_KINDS) * len(TASK_DIRS) == 126
    assert len(SQUAD_KINDS) + len(JSONL_KINDS) == 30

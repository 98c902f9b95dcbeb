"""Readers for the original GLUE TSV files (the layout written by `download_glue_data.py`).

Each reader returns a `datasets.Dataset` with the hub's columns (`nyu-mll/glue`): the text
columns under their hub names, `label` (a ClassLabel id, or a float32 score for STS-B) and
`idx` (the row's position among the file's data rows, as the hub numbers it).

The files are tab-separated with quote characters as literal text: MRPC has sentences that
start with `"`, and CSV quoting would silently merge rows. So lines are split on "\\n" and
fields on "\\t" only (csv.QUOTE_NONE semantics). Per-task quirks are data in GLUE_LAYOUTS.
"""

from __future__ import annotations

import codecs
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from roberta_lora.choices import has_visible_text
from roberta_lora.errors import DataError

if TYPE_CHECKING:  # datasets is imported lazily: tasks.py imports this module for GLUE_LAYOUTS
    import datasets

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueLayout:
    """Where a task's fields are in its TSV file."""

    text_columns: dict[str, str | int]
    """Hub column name -> header name in the file (or 0-based position when there is no header)."""
    label: str | int
    """Header name (or position) of the gold label / score."""
    num_columns: int | None = None
    """Expected field count for files without a header (CoLA)."""
    regression: bool = False
    """The label is a float score (STS-B) rather than a class."""
    lenient: bool = False
    """QQP only: rows with the wrong field count are skipped, empty questions are kept (both logged).

    Older GLUE releases of QQP have a few rows with stray tabs/newlines that no reader can
    split correctly, and the hub keeps two pairs with an empty question2; every other task
    treats such rows as errors.
    """


GLUE_LAYOUTS: dict[str, GlueLayout] = {
    # CoLA has no header: source, label (0/1), original author mark, sentence.
    "cola": GlueLayout({"sentence": 3}, label=1, num_columns=4),
    "sst2": GlueLayout({"sentence": "sentence"}, label="label"),
    # MRPC's header starts with a UTF-8 BOM (inherited from the MSR file); decoding strips it.
    "mrpc": GlueLayout({"sentence1": "#1 String", "sentence2": "#2 String"}, label="Quality"),
    # STS-B: index genre filename year old_index source1 source2 sentence1 sentence2 score.
    "stsb": GlueLayout({"sentence1": "sentence1", "sentence2": "sentence2"}, label="score", regression=True),
    "qqp": GlueLayout({"question1": "question1", "question2": "question2"}, label="is_duplicate", lenient=True),
    # MNLI: sentence1/sentence2 are the raw texts (the *_parse columns are trees); gold_label is last.
    "mnli": GlueLayout({"premise": "sentence1", "hypothesis": "sentence2"}, label="gold_label"),
    "qnli": GlueLayout({"question": "question", "sentence": "sentence"}, label="label"),
    "rte": GlueLayout({"sentence1": "sentence1", "sentence2": "sentence2"}, label="label"),
    "wnli": GlueLayout({"sentence1": "sentence1", "sentence2": "sentence2"}, label="label"),
}

GLUE_LAYOUT_HELP = (
    "The original GLUE layout (as written by download_glue_data.py) is one folder per task, "
    "e.g. <data_dir>/SST-2/train.tsv and <data_dir>/SST-2/dev.tsv; MNLI has dev_matched.tsv "
    "and dev_mismatched.tsv."
)


def parse_label(value: str, label_names: Sequence[str], path: str | Path, line: int) -> int:
    """Map a label written as a name ("entailment") or an id ("1") to its id.

    Raises:
        DataError: naming the file, line and the valid names and ids.
    """
    if value in label_names:
        return label_names.index(value)
    if _INTEGER.fullmatch(value) and int(value) < len(label_names):  # ASCII digits only: not "1_0", "²" or "١"
        return int(value)
    valid = ", ".join(f"{i}={name}" for i, name in enumerate(label_names))
    raise DataError(
        f"unknown label {value!r}; expected a name or id among {valid}. "
        "Check that the file belongs to this task and that its label column was not shifted.",
        str(path),
        line,
    )


def parse_score(value: str, score_range: tuple[float, float] | None, path: str | Path, line: int) -> float:
    """Parse a regression score such as "3.800" (`strict_float`) and check it lies in `score_range`."""
    score = strict_float(value)
    if score is None:
        raise DataError(f"score {value!r:.60} is not a number; expected a finite decimal number such as 3.800 "
                        "(no underscores, no nan or inf). Fix the value.", str(path), line)
    if score_range is not None and not score_range[0] <= score <= score_range[1]:
        raise DataError(
            f"score {score} is outside the task's range {score_range[0]}..{score_range[1]}; "
            "fix the value or the task's score_range.",
            str(path),
            line,
        )
    return score


_INTEGER = re.compile(r"\s*[0-9]+\s*")
_DECIMAL = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")


def strict_float(value: str) -> float | None:
    """A decimal number written as data files write one ("3.800", "-1", "2e-3"), or None.

    Python's `float` also takes "1_0" (10.0), "nan", "inf", "1e999" and digits of other scripts: in a data
    file those are typos or damage, not scores, so they are refused here rather than read as a number.
    """
    if not _DECIMAL.fullmatch(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 file (a leading BOM is dropped); a bad byte is a DataError with its line."""
    path = Path(path)
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    nul = data.find(b"\0")
    if nul >= 0:  # text files hold no NUL bytes: this is binary data, or a file cut and padded by a crash
        raise DataError(f"a NUL byte at offset {nul}: this is not a text file (binary data, or damaged); "
                        "re-export it as UTF-8 text", str(path), data[:nul].count(b"\n") + 1)
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = bom + err.start  # in the file, BOM included
        line = data[:offset].count(b"\n") + 1
        raise DataError(
            f"byte 0x{data[offset]:02x} at offset {offset} is not valid UTF-8; "
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
            str(path),
            line,
        ) from err


def missing_file_error(path: Path, what: str) -> DataError:
    """A DataError for a data file that does not exist, listing what its folder holds."""
    folder = path.parent
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    listing = f"{folder} holds: {', '.join(present)}" if present else f"{folder} is missing or empty"
    return DataError(f"{what} not found ({listing}). {GLUE_LAYOUT_HELP}", str(path))


def read_glue_tsv(
    path: str | Path,
    layout: str,
    label_names: Sequence[str] = (),
    score_range: tuple[float, float] | None = None,
) -> datasets.Dataset:
    """Read one split of a GLUE task from its original TSV file.

    Args:
        path: e.g. `glue_data/MRPC/dev.tsv`.
        layout: a key of GLUE_LAYOUTS ("cola", "mrpc", ...).
        label_names: class names in hub order (empty for STS-B).
        score_range: allowed (min, max) score for STS-B.

    Raises:
        DataError: naming file and line, for a missing file or column, a row with the wrong
            number of fields (skipped and logged for QQP), an empty text, an unknown label or
            a bad score.
    """
    import datasets

    if layout not in GLUE_LAYOUTS:
        raise DataError(f"unknown GLUE layout {layout!r}; expected one of {sorted(GLUE_LAYOUTS)}", str(path))
    spec = GLUE_LAYOUTS[layout]
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path, f"GLUE {layout} file")
    lines = read_text_file(path).split("\n")
    positions, width, first_row = _column_positions(spec, lines[0].rstrip("\r"), path)

    columns: dict[str, list] = {name: [] for name in spec.text_columns}
    labels: list[int | float] = []
    indexes: list[int] = []
    skipped: list[int] = []
    empty: list[int] = []
    row_number = -1
    for line_no, raw in enumerate(lines[first_row:], start=first_row + 1):
        line = raw.rstrip("\r")
        if not line:  # blank lines (e.g. the one after the final newline) hold no row
            continue
        row_number += 1
        fields = line.split("\t")
        if len(fields) != width:
            if spec.lenient:
                skipped.append(line_no)
                continue
            raise DataError(
                f"expected {width} tab-separated fields, found {len(fields)}. A tab or line break inside "
                "a text breaks the GLUE TSV layout; remove it or re-create the file from the original release.",
                str(path),
                line_no,
            )
        for name in spec.text_columns:
            pos = positions[name]
            text = fields[pos]
            if not has_visible_text(text):  # empty, blank, or only control / zero-width characters
                if not spec.lenient:
                    shown = f" (it holds only {text!r:.60}: whitespace, control or zero-width characters)" if text else ""
                    raise DataError(
                        f"empty {name!r} text (field {pos + 1}){shown}; every example needs its text(s). "
                        "Remove the row or fill in the text.",
                        str(path),
                        line_no,
                    )
                empty.append(line_no)
            columns[name].append(text)
        value = fields[positions["__label__"]]
        labels.append(
            parse_score(value, score_range, path, line_no)
            if spec.regression
            else parse_label(value, label_names, path, line_no)
        )
        indexes.append(row_number)
    if skipped:
        logger.warning(
            "%s: skipped %d malformed row(s) without %d fields (lines %s); this is known for QQP.",
            path, len(skipped), width, ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else ""),
        )
    if empty:
        logger.warning("%s: kept %d row(s) with an empty question (lines %s).", path, len(empty), empty[:10])
    if not labels:
        raise DataError("no data rows; expected at least one example after the header.", str(path))

    label_feature = datasets.Value("float32") if spec.regression else datasets.ClassLabel(names=list(label_names))
    features = datasets.Features(
        {**{name: datasets.Value("string") for name in columns}, "label": label_feature, "idx": datasets.Value("int32")}
    )
    return datasets.Dataset.from_dict({**columns, "label": labels, "idx": indexes}, features=features)


def _column_positions(spec: GlueLayout, header_line: str, path: Path) -> tuple[dict[str, int], int, int]:
    """Resolve the layout's columns to positions.

    Returns:
        (hub column -> position, with the label under "__label__"), the expected field count,
        and the index of the first data line (0 without a header, 1 with one).
    """
    wanted = {**spec.text_columns, "__label__": spec.label}
    if spec.num_columns is not None:  # no header: fixed positions
        return {name: int(pos) for name, pos in wanted.items()}, spec.num_columns, 0
    header = header_line.split("\t")
    missing = [str(col) for col in wanted.values() if col not in header]
    if missing:
        raise DataError(
            f"header lacks column(s) {missing}; found {header}. Expected the original GLUE header "
            f"with columns {[str(c) for c in wanted.values()]}. {GLUE_LAYOUT_HELP}",
            str(path),
            1,
        )
    return {name: header.index(col) for name, col in wanted.items()}, len(header), 1

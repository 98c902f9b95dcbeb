"""Every real file under ../shared/data loads with the row counts listed in its README.md.

Skipped (by the `shared_data` fixture) when that folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from roberta_lora.data.readers import data_info, load_split
from roberta_lora.data.tasks import load_task

# file (relative to shared/data) -> (task, split, rows or questions), from shared/data/README.md
FILES = {
    "glue/CoLA/train.tsv": ("cola", "train", 8551),
    "glue/CoLA/dev.tsv": ("cola", "validation", 1043),
    "glue/SST-2/train.tsv": ("sst2", "train", 67349),
    "glue/SST-2/dev.tsv": ("sst2", "validation", 872),
    "glue/MRPC/train.tsv": ("mrpc", "train", 3668),
    "glue/MRPC/dev.tsv": ("mrpc", "validation", 408),
    "glue/STS-B/train.tsv": ("stsb", "train", 5749),
    "glue/STS-B/dev.tsv": ("stsb", "validation", 1500),
    "glue/QNLI/dev.tsv": ("qnli", "validation", 5463),
    "glue/RTE/train.tsv": ("rte", "train", 2490),
    "glue/RTE/dev.tsv": ("rte", "validation", 277),
    "glue/WNLI/train.tsv": ("wnli", "train", 635),
    "glue/WNLI/dev.tsv": ("wnli", "validation", 71),
    "squad/dev-v1.1.json": ("squad_v1", "validation", 10570),
}

# The README's HF num_bytes check: text bytes + 4 bytes per text (offsets) + label (8, or 4 for the
# float STS-B score) + 4 (idx) per row. Equality means our text is byte-identical to the hub's.
HF_NUM_BYTES = {
    "glue/CoLA/train.tsv": 484869, "glue/CoLA/dev.tsv": 60322,
    "glue/SST-2/train.tsv": 4681603, "glue/SST-2/dev.tsv": 106252,
    "glue/STS-B/train.tsv": 754791, "glue/STS-B/dev.tsv": 216064,
    "glue/QNLI/dev.tsv": 1368295,  # 9 bytes short of the hub's 1368304, as the README documents
    "glue/RTE/train.tsv": 847320, "glue/RTE/dev.tsv": 90728,
    "glue/WNLI/train.tsv": 107109, "glue/WNLI/dev.tsv": 12162,
}


def test_every_shared_file_is_covered(shared_data: Path) -> None:
    present = {str(p.relative_to(shared_data)) for p in shared_data.rglob("*") if p.is_file() and p.name != "README.md"}
    assert present == set(FILES)


@pytest.mark.parametrize("relative", sorted(FILES))
def test_row_counts(shared_data: Path, relative: str) -> None:
    task, split, rows = FILES[relative]
    spec = load_task(task)
    data_dir = shared_data / ("squad" if task.startswith("squad") else "glue")
    dataset = load_split(spec, split, shared_data if task.startswith("squad") else data_dir)
    assert len(dataset) == rows
    if relative in HF_NUM_BYTES:
        n = len(dataset)
        text_bytes = sum(len(t.encode("utf-8")) for c in spec.text_columns for t in dataset[c])
        label_bytes = 4 if spec.kind == "regression" else 8
        assert text_bytes + n * (4 * len(spec.text_columns) + label_bytes + 4) == HF_NUM_BYTES[relative]


def test_qnli_label_distribution(shared_data: Path) -> None:
    info = data_info(load_task("qnli"), shared_data / "glue")
    assert info["splits"]["validation"]["labels"] == {"entailment": 2702, "not_entailment": 2761}
    assert "train" in info["missing"]  # QNLI train is not shipped (size)


def test_first_rows_match_the_hub(shared_data: Path) -> None:
    glue = shared_data / "glue"
    assert load_split(load_task("cola"), "validation", glue)[0]["sentence"] == "The sailors rode the breeze clear of the rocks."
    assert load_split(load_task("wnli"), "validation", glue)[0]["sentence1"].startswith("The drain is clogged with hair")
    mrpc = load_split(load_task("mrpc"), "validation", glue)[0]
    assert mrpc["sentence2"].startswith('"The foodservice pie business') and mrpc["label"] == 1  # literal quote, BOM header


def test_squad_dev_summary(shared_data: Path) -> None:
    info = data_info(load_task("squad_v1"), shared_data)
    assert info["splits"]["validation"]["questions"] == 10570
    assert info["splits"]["validation"]["articles"] == 48
    assert info["splits"]["validation"]["unanswerable"] == 0

"""benchmarks/variants.py runs end to end on a tiny BERT and a GLUE fixture: one record per run, the same
trainable set on both sides, runs already recorded are skipped, and --report writes the table and the plot."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from fixtures_glue import write_glue_fixture

pytest.importorskip("peft")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """Import benchmarks/<name>.py (it imports its helpers as `common`, from its folder)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows of the markdown table whose first column is `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start:]
             if line.startswith("|")]
    return cells[0], cells[2:]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT saved with a pooler (BertForSequenceClassification and the "roberta" head both start from it)."""
    from transformers import BertModel

    from roberta_lora.model.toy import make_toy_encoder

    root = tmp_path_factory.mktemp("variants-bert")
    toy = make_toy_encoder(root / "toy", "bert", seed=1)
    torch.manual_seed(0)
    BertModel(BertModel.config_class.from_pretrained(toy)).save_pretrained(root / "pooled")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(toy / name, root / "pooled" / name)
    return root / "pooled"


def test_the_training_subset_is_fixed_and_keeps_the_file_layout(tmp_path: Path) -> None:
    variants = load_script("variants")
    for task in ("cola", "mrpc"):  # CoLA has no header; MRPC's header starts with a BOM
        write_glue_fixture(tmp_path / "glue", task, n_train=30, n_dev=6)
    first = {t: variants.write_subset(t, tmp_path / "glue", tmp_path / "a", 10, 7) for t in ("cola", "mrpc")}
    again = {t: variants.write_subset(t, tmp_path / "glue", tmp_path / "b", 10, 7) for t in ("cola", "mrpc")}
    assert first == again and first["cola"]["train_rows"] == 10
    assert variants.write_subset("cola", tmp_path / "glue", tmp_path / "c", 100, 7)["train_rows"] == 30  # min(n, k)
    cola = (tmp_path / "a/CoLA/train.tsv").read_text().splitlines()
    assert len(cola) == 10 and all(line.startswith("gj04\t") for line in cola)
    mrpc = (tmp_path / "a/MRPC/train.tsv").read_text(encoding="utf-8").splitlines()
    assert len(mrpc) == 11 and mrpc[0].startswith("\ufeffQuality")
    assert (tmp_path / "a/MRPC/dev.tsv").read_bytes() == (tmp_path / "glue/MRPC/dev.tsv").read_bytes()


def test_processes_side_by_side_share_one_queue(tmp_path: Path) -> None:
    import os
    import subprocess

    variants = load_script("variants")
    args = variants.parse_args(["--records", str(tmp_path / "none.jsonl")])
    claims = tmp_path / "claims"
    assert variants.claim(claims, "lora", "rte", 0, args)
    assert not variants.claim(claims, "lora", "rte", 0, args)  # held by a live process (this one)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (claims / "dora-rte-0").write_text(str(dead.pid))
    assert variants.claim(claims, "dora", "rte", 0, args)  # its holder died without a record: taken over
    assert (claims / "dora-rte-0").read_text() == str(os.getpid())


def test_variants_runs_records_resumes_and_reports(tiny_bert: Path, tmp_path: Path) -> None:
    variants = load_script("variants")
    data = tmp_path / "glue"
    write_glue_fixture(data, "sst2", n_train=40, n_dev=12)
    write_glue_fixture(data, "stsb", n_train=40, n_dev=12)
    records, output, plot = tmp_path / "v.jsonl", tmp_path / "v.md", tmp_path / "v.png"
    argv = ["--model", str(tiny_bert), "--data-dir", str(data), "--tasks", "sst2,stsb", "--seeds", "0",
            "--methods", "lora,peft-lora,dora,peft-loraplus", "--steps", "3", "--train-samples", "16",
            "--batch-size", "4", "--eval-batch-size", "8", "--max-length", "32",
            "--records", str(records), "--output", str(output), "--plot", str(plot)]
    assert variants.main([*argv, "--no-report"]) == records
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert sorted((r["method"], r["task"]) for r in lines) == sorted(
        (m, t) for m in ("lora", "peft-lora", "dora", "peft-loraplus") for t in ("sst2", "stsb"))
    for record in lines:
        assert record["steps_seen"] == 3 and record["train_rows"] == 16 and record["adapter_bytes"] > 0
        assert record["main_metric"] == {"sst2": "accuracy", "stsb": "pearson"}[record["task"]]
    by = {(r["method"], r["task"]): r for r in lines}
    for task in ("sst2", "stsb"):
        # like for like: PEFT trains exactly as many parameters as roberta-lora, on the same rows
        assert by[("lora", task)]["trainable"] == by[("peft-lora", task)]["trainable"]
        assert by[("lora", task)]["train_sha256"] == by[("peft-lora", task)]["train_sha256"]
    assert by[("dora", "sst2")]["trainable"] > by[("lora", "sst2")]["trainable"]  # the magnitudes

    assert variants.main(argv) == output  # every run is recorded: nothing trains again, the report is written
    assert len(records.read_text().splitlines()) == len(lines)
    header, rows = table_rows(output.read_text(), "method")
    assert header[:4] == ["method", "SST-2", "STS-B", "2-task mean"]
    assert [row[0] for row in rows] == ["`lora`", "`peft-lora`", "`dora`", "`peft-loraplus`", "majority class (reference)"]
    assert rows[-1][1:3] == ["50.00", "0.00"]  # the fixture's labels alternate; STS-B's floor is shown as 0
    assert "Command: `python benchmarks/variants.py" in output.read_text()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

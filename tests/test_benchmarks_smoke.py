"""The benchmark scripts run end to end on tiny configs and write their markdown tables.

Only the plumbing is checked (arguments, variants, table columns); nothing here is timed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fixtures_glue import write_glue_fixture

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """Import benchmarks/<name>.py (the scripts import their helpers as `common`, from their folder)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows of the markdown table whose first column is `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return cells(lines[start]), rows


def test_step_time_writes_a_table_for_every_variant(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    output = tmp_path / "step_time.md"
    written = load_script("step_time").main([
        "--size", "tiny", "--seq-lens", "8,16", "--batch-size", "2", "--warmup", "0", "--repeats", "1",
        "--output", str(output),
    ])
    assert written == output
    text = output.read_text()
    assert "Command: `python benchmarks/step_time.py --size tiny" in text and "torch" in text
    header, rows = table_rows(text, "seq")
    # The ratio columns name their clock: (cpu) with one torch thread, else (wall).
    assert header[:5] == ["seq", "variant", "trainable params", "median wall s/step", "median CPU s/step"]
    assert header[5].startswith("vs limit (") and header[6].startswith("vs PEFT (")
    assert header[7:] == ["state MB", "activations MB"]
    assert [(r[0], r[1]) for r in rows] == [(s, v) for s in ("8", "16") for v in ("full", "limit", "peft", "roberta-lora")]
    trainable = {r[1]: int(r[2].replace(",", "")) for r in rows}
    assert trainable["peft"] == trainable["roberta-lora"] > trainable["limit"]
    assert "roberta-lora / PEFT" in text and "roberta-lora / limit" in text


def test_adapter_ops_writes_its_three_tables(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    output = tmp_path / "adapter_ops.md"
    load_script("adapter_ops").main([
        "--size", "tiny", "--cycles", "1", "--warmup", "0", "--repeats", "1", "--batch-size", "2", "--seq-len", "8",
        "--output", str(output),
    ])
    text = output.read_text()
    header, rows = table_rows(text, "operation")
    assert header == ["operation", "median ms", "max ms", "samples", "what it does"]
    assert {r[0] for r in rows} >= {"load_adapter(dir, name)", "set_adapter, same head shape", "merge_adapter()"}
    header, rows = table_rows(text, "model")
    assert header[0] == "model" and [r[0] for r in rows] == ["plain base", "merged", "unmerged"]
    header, rows = table_rows(text, "what")
    assert header == ["what", "bytes", "files"] and len(rows) == 3


def test_epoch_throughput_runs_all_three_pipelines(tmp_path: Path, tiny_model_dir: Path) -> None:
    pytest.importorskip("peft")
    write_glue_fixture(tmp_path / "glue", "sst2", n_train=16, n_dev=8)
    output = tmp_path / "epoch.md"
    load_script("epoch_throughput").main([
        "--data-dir", str(tmp_path / "glue"), "--tasks", "sst2", "--model", str(tiny_model_dir),
        "--train-samples", "16", "--warmup-samples", "0", "--batch-size", "8", "--eval-batch-size", "8",
        "--workdir", str(tmp_path / "work"), "--output", str(output),
    ])
    text = output.read_text()
    header, rows = table_rows(text, "task")
    assert header[:3] == ["task", "pipeline", "train + eval examples"] and "vs trainer-dynamic" in header
    assert [r[1] for r in rows] == ["roberta-lora", "trainer-padded", "trainer-dynamic"]
    assert all(r[2] == "16 + 8" for r in rows)


def test_layer_breakdown_times_every_part_forward_and_backward(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    output = tmp_path / "breakdown.md"
    script = load_script("layer_breakdown")
    script.main(["--size", "tiny", "--layers", "2", "--seq-len", "8", "--batch-size", "2", "--warmup", "0",
                 "--repeats", "1", "--output", str(output)])
    header, rows = table_rows(output.read_text(), "part (ms per layer)")
    assert header == ["part (ms per layer)", "limit", "peft", "roberta-lora", "peft - limit", "roberta-lora - limit"]
    parts = ("attention.self", "attention.output", "intermediate", "output")
    assert [r[0] for r in rows] == [f"{p} {phase}" for p in parts for phase in ("forward", "backward")] + [
        "rest of the step (per step)", "whole step (per step)"]
    # Every hook fired in every variant: a part whose backward was never seen would read "nan".
    assert all(float(cell) > 0 for row in rows[:-2] for cell in row[1:4])
    with pytest.raises(SystemExit):
        script.parse_args(["--variants", "peft,roberta-lora"])  # the differences need the limit

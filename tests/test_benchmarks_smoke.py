"""The benchmark scripts run end to end on tiny configs and write tables whose numbers are right.

Nothing here is timed: the checks are the figures a reader compares (ratios computed from the same
run's medians, parameter counts and file sizes that match an independent count, every variant and
every timing hook present), so a benchmark that reports the wrong thing fails here.
"""

from __future__ import annotations

import importlib.util
import re
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
    trainable = {r[1]: int(r[2].replace(",", "")) for r in rows if r[0] == "8"}
    # The tiny model (hidden 32, FFN 64, 2 layers, r=8 on q,v) counted by hand, as in test_model.py.
    extras = 2 * ((4 * 32 + 64 + 32) + 2 * (32 + 32)) + (32 + 32) + (32 + 32) + (32 * 2 + 2)
    assert trainable == {**trainable, "limit": extras, "peft": extras + 2 * 2 * (8 * 32 + 32 * 8),
                         "roberta-lora": extras + 2 * 2 * (8 * 32 + 32 * 8)}
    assert "roberta-lora / PEFT" in text and "roberta-lora / limit" in text


def test_step_time_ratios_and_verdicts_come_from_the_measured_medians() -> None:
    script = load_script("step_time")
    args = script.parse_args(["--size", "tiny", "--seq-lens", "64", "--threads", "1", "--device", "cpu"])
    times = {"full": 3.0, "limit": 2.0, "peft": 2.2, "roberta-lora": 2.09}
    records = [{"seq_len": 64, "variant": v, "trainable": 10, "wall": 9.0, "cpu": t, "state": 1.0, "activations": 2.0}
               for v, t in times.items()]
    header, rows = table_rows(script.report(records, args), "seq")
    assert header[5:7] == ["vs limit (cpu)", "vs PEFT (cpu)"]  # one torch thread on a CPU: the CPU clock
    assert {r[1]: (r[5], r[6]) for r in rows} == {
        "full": ("1.500", "1.364"), "limit": ("1.000", "0.909"), "peft": ("1.100", "1.000"),
        "roberta-lora": ("1.045", "0.950")}
    text = script.report(records, args)
    assert "roberta-lora / PEFT = **0.950**, met" in text and "roberta-lora / limit = **1.045**, NOT met" in text


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
    samples = {r[0]: int(r[3]) for r in rows}
    assert samples["load_adapter(dir, name)"] == 9  # nine adapters, one timed cycle
    assert samples["set_adapter, same head shape"] + samples["set_adapter, other number of classes"] == 9
    assert all(0 < float(r[1]) <= float(r[2]) for r in rows)  # median <= max, both measured
    header, rows = table_rows(text, "model")
    assert header[0] == "model" and [r[0] for r in rows] == ["plain base", "merged", "unmerged"]
    header, rows = table_rows(text, "what")
    assert header == ["what", "bytes", "files"] and len(rows) == 3
    ours = rows[0]
    parts = [int(n.replace(",", "")) for n in ours[2].replace("adapter.safetensors", "").replace(
        "adapter_config.json", "").split("+")]
    assert int(ours[1].replace(",", "")) == sum(parts)  # the total is the sum of the two files
    # The safetensors file holds exactly the tiny sst2 adapter's tensors (LoRA, biases, LayerNorms, light
    # head: 2,946 floats, counted by hand in test_model.py) plus its header.
    assert 2946 * 4 < parts[0] < 2946 * 4 + 8000
    from transformers import RobertaModel

    from roberta_lora.model.toy import toy_config

    encoder_floats = sum(p.numel() for p in RobertaModel(toy_config(400), add_pooling_layer=False).parameters())
    assert int(rows[2][1].replace(",", "")) == 4 * encoder_floats


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
    for r in rows:  # examples/s is the examples over the median time the row reports
        assert float(r[5]) == pytest.approx(24 / float(r[3]), rel=0.2, abs=0.5)
        assert 0.0 <= float(r[-1]) <= 1.0  # a real accuracy on the 8 validation rows
    clock = 6 if "CPU" in text.split("vs trainer-dynamic")[0][-200:] else 5
    speeds = {r[1]: float(r[clock]) for r in rows}
    assert float(rows[0][8]) == pytest.approx(speeds["roberta-lora"] / speeds["trainer-dynamic"], rel=0.2, abs=0.02)


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


def test_serve_benchmark_measures_every_variant_through_the_real_server(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    output = tmp_path / "serve.md"
    load_script("serve").main(["--part", "server", "--adapters", "1,2", "--requests", "12", "--concurrency", "3",
                               "--size", "tiny", "--output", str(output)])
    text = output.read_text()
    assert "<!-- section: server-tiny-" in text and "forward-" not in text  # only the part asked for ran
    header, rows = table_rows(text, "adapters")
    assert header == ["adapters", "variant", "examples/s", "p50 ms", "p99 ms"]
    assert [(r[0], r[1]) for r in rows] == [(n, v) for n in ("1", "2") for v in ("mixed", "grouped", "merged", "base")]
    assert all(float(r[2]) > 0 and 0 < float(r[3]) <= float(r[4]) for r in rows)
    assert "mixed / grouped = **" in text and "mixed / merged = **" in text and "mixed / base alone = **" in text


def test_serve_forward_part_checks_and_times_ours_peft_and_the_base(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    output = tmp_path / "serve.md"
    load_script("serve").main(["--part", "forward", "--size", "tiny", "--cases", "2x4,3x6", "--ranks", "4,2",
                               "--tokens", "8", "--unused", "3x4:2:16", "--warmup", "0", "--repeats", "1",
                               "--output", str(output)])
    text = output.read_text()  # reaching here means ours and PEFT agreed with each adapter alone
    assert "<!-- section: forward-tiny-" in text and "Command: `python benchmarks/serve.py --part forward" in text
    header, rows = table_rows(text, "adapters / rows")
    header = [re.sub(r" \((CPU|wall)\)$", "", h) for h in header]  # the clock the times were read from
    assert header == ["adapters / rows", "ours ms", "PEFT ms", "base alone ms", "base / ours", "PEFT / ours"]
    assert [r[0] for r in rows] == ["2 / 4", "3 / 6"]
    for r in rows:  # the ratios are the medians' ratios
        ours, peft, base = (float(c) for c in r[1:4])
        assert float(r[4]) == pytest.approx(base / ours, rel=0.05, abs=0.002)
        assert float(r[5]) == pytest.approx(peft / ours, rel=0.05, abs=0.002)
    header, rows = table_rows(text, "adapters loaded")
    header = [re.sub(r" \((CPU|wall)\)$", "", h) for h in header]
    assert header == ["adapters loaded", "ms per forward", "throughput vs all r=2", "held MB"]
    assert [r[0] for r in rows] == ["3 x r=2", "2 x r=2 + 1 x r=16 (unused)"]
    assert float(rows[1][2]) == pytest.approx(float(rows[0][1]) / float(rows[1][1]), rel=0.05, abs=0.002)
    assert float(rows[1][3]) > float(rows[0][3])  # the r=16 adapter holds more, whatever it costs the batch
    assert "ours' throughput / the base alone's = **" in text and "throughput / all r=2 = **" in text


def test_serve_forward_verdicts_come_from_the_medians() -> None:
    script = load_script("serve")
    args = script.parse_args(["--size", "tiny", "--ranks", "8,4"])
    records = [{"adapters": 16, "rows": 32, "ours": 700.0, "peft": 770.0, "base": 693.0},
               {"adapters": 64, "rows": 64, "ours": 1400.0, "peft": 1540.0, "base": 1302.0}]
    unused = {"adapters": 16, "rows": 32, "rank": 8, "large": 64, "same": 700.0, "mixed": 800.0,
              "held_same": 2 * 1024 * 1024, "held_mixed": 3 * 1024 * 1024}
    text = script.forward_report(records, unused, args)
    _, rows = table_rows(text, "adapters / rows")
    assert [r[4:] for r in rows] == [["0.990", "1.100"], ["0.930", "1.100"]]
    assert "16 adapters / 32 rows: ours' throughput / the base alone's = **0.990**, met" in text
    assert "64 adapters / 64 rows: ours' throughput / the base alone's = **0.930**, NOT met" in text
    _, rows = table_rows(text, "adapters loaded")
    assert rows[1][1:] == ["800.0", "0.875", "3.00"]
    assert "throughput / all r=8 = **0.875**, NOT met (goal >= 0.9)" in text


def test_serve_sections_replace_only_their_own(tmp_path: Path) -> None:
    script = load_script("serve")
    output = tmp_path / "serve.md"
    script.write_section(output, "server-tiny-1t", "Server", "cmd 1", "| adapters |\n|---|\n| 1 |")
    script.write_section(output, "forward-base-2t", "Forward", "cmd 2", "forward body")
    script.write_section(output, "server-tiny-1t", "Server", "cmd 3", "new server body")
    text = output.read_text()
    assert text.startswith("# Serving many adapters")
    assert text.index("section: forward-base") < text.index("section: server-tiny")  # the headline first
    assert "forward body" in text and "new server body" in text and "cmd 1" not in text
    assert text.count("<!-- section:") == 2


def test_fingerprint_benchmark_times_both_versions(tmp_path: Path) -> None:
    output = tmp_path / "fingerprint.md"
    load_script("fingerprint").main(["--size", "tiny", "--rounds", "1", "--output", str(output)])
    header, rows = table_rows(output.read_text(), "size")
    assert header == ["size", "parameters", "fingerprint", "median ms", "peak memory rise MB"]
    assert [row[2].split()[0] for row in rows] == ["0.1", "0.2"]
    assert all(float(row[3]) > 0 for row in rows)


def test_input_checks_benchmark_reports_the_checks_against_the_step(tmp_path: Path) -> None:
    output = tmp_path / "input_checks.md"
    load_script("input_checks").main(["--size", "tiny", "--seq-lens", "16", "--steps", "1", "--calls", "5",
                                      "--output", str(output)])
    header, rows = table_rows(output.read_text(), "seq")
    assert header == ["seq", "checks µs / forward", "training step CPU s", "checks / step"]
    seq, check, step, ratio = rows[0]
    assert seq == "16" and float(check) > 0 and float(step) > 0
    assert float(ratio) == pytest.approx(float(check) * 1e-6 / float(step), rel=0.1)

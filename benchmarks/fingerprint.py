"""What computing the base fingerprint costs, before (0.1) and after (0.2), at roberta-base and XLM-R-large sizes.

Every `LoraWrapperRoberta` computes its base's fingerprint once, at construction. 0.1's read only the
embedding tables, each through a float64 copy; 0.2's reads a fixed sample of 256 values from every
embedding, LayerNorm and bias tensor of every layer through strided views. Both run here on the same
random-weight encoder; the old one is kept in the package as `legacy_base_fingerprint`, which is what
checks an adapter written by 0.1.

Time: median wall seconds over the rounds. Memory: the rise of the process's peak resident memory during
one call, read from /proc (the peak is reset before each call with /proc/self/clear_refs), so it is
what the call itself allocated at its worst.

    python benchmarks/fingerprint.py               # roberta-base and XLM-R-large; writes results/fingerprint.md
    python benchmarks/fingerprint.py --size tiny   # a seconds-long check
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from common import MB, RESULTS_DIR, command_line, markdown_table, median, set_threads, write_results
from transformers import RobertaConfig, XLMRobertaConfig

from roberta_lora.model.adapter_files import base_fingerprint, legacy_base_fingerprint
from roberta_lora.model.families import build_encoder

SIZES: dict[str, Callable[[], Any]] = {
    "roberta-base": lambda: RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                                          num_attention_heads=12, intermediate_size=3072,
                                          max_position_embeddings=514, type_vocab_size=1),
    "xlm-roberta-large": lambda: XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
                                                  num_attention_heads=16, intermediate_size=4096,
                                                  max_position_embeddings=514, type_vocab_size=1),
    "tiny": lambda: RobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=66, type_vocab_size=1),
}
VARIANTS = {"0.1 (embeddings, float64 copy)": legacy_base_fingerprint,
            "0.2 (every layer, strided sample)": base_fingerprint}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rise_mb(function: Callable[[], Any]) -> float | None:
    """How far the peak resident memory rises above the current one while `function` runs (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return None
    before = _status_kb("VmRSS")
    function()
    after = _status_kb("VmHWM")
    return None if before is None or after is None else max(0, after - before) * 1024 / MB


def measure(size: str, rounds: int) -> list[list[Any]]:
    torch.manual_seed(0)
    encoder = build_encoder(SIZES[size]()).eval()
    parameters = sum(p.numel() for p in encoder.parameters())
    rows = []
    for variant, function in VARIANTS.items():
        function(encoder)  # warm-up
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            function(encoder)
            seconds.append(time.perf_counter() - start)
        rise = peak_rise_mb(functools.partial(function, encoder))
        rows.append([size, f"{parameters / 1e6:.0f}M", variant, f"{median(seconds) * 1000:.1f}",
                     "n/a" if rise is None else f"{rise:.0f}"])
    return rows


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=[*SIZES, "all"], default="all",
                        help="all: roberta-base and xlm-roberta-large")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "fingerprint.md")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    sizes = ["roberta-base", "xlm-roberta-large"] if args.size == "all" else [args.size]
    rows = [row for size in sizes for row in measure(size, args.rounds)]
    table = markdown_table(["size", "parameters", "fingerprint", "median ms", "peak memory rise MB"], rows)
    ratios = []
    for size in sizes:
        old, new = (row for row in rows if row[0] == size)
        ratios.append(f"- {size}: 0.2 takes {float(new[3]) / float(old[3]):.3f} of 0.1's time "
                      f"({old[3]} -> {new[3]} ms); peak memory rise {old[4]} -> {new[4]} MB.")
    body = (f"Random weights, fp32, CPU, {args.threads} torch thread(s); {args.rounds} timed rounds after one "
            "warm-up.\n\n" + table + "\n\n" + "\n".join(ratios) + "\n")
    path = write_results(args.output, "Base fingerprint cost", command_line("fingerprint.py", argv), "cpu", body)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()

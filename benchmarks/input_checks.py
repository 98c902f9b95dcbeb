"""What `LoraWrapperRoberta.forward`'s input checks cost, against the training step they guard.

forward() checks what is cheap before the encoder runs (integer ids, the mask's shape, the length
within the position table, labels in range: `_check_batch`). This times that check alone, at roberta-base
dimensions and the step_time.py batch (16 x seq), and one full training step (forward, backward, AdamW)
of the same model on the same batch, in one run, one torch thread, CPU time; the ratio is what the
checks add to a step.

    python benchmarks/input_checks.py              # writes results/input_checks.md
    python benchmarks/input_checks.py --size tiny  # a seconds-long check
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from common import RESULTS_DIR, command_line, markdown_table, set_threads, write_results
from transformers import RobertaConfig

from roberta_lora.model.wrapper import LoraWrapperRoberta

SIZES = {
    "base": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1),
    "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=130, type_vocab_size=1),
}


def measure(size: str, seq: int, batch: int, steps: int, calls: int) -> list:
    torch.manual_seed(0)
    config = RobertaConfig(**SIZES[size])
    model = LoraWrapperRoberta(model_id=config, num_classes=2, seed=0)
    ids = torch.randint(5, config.vocab_size, (batch, seq))
    mask, labels = torch.ones_like(ids), torch.randint(0, 2, (batch,))
    arguments = (ids, mask, None, labels, None, None)
    for _ in range(20):
        model._check_batch(*arguments)
    rounds = []
    for _ in range(7):
        start = time.process_time()
        for _ in range(calls):
            model._check_batch(*arguments)
        rounds.append((time.process_time() - start) / calls)
    check = statistics.median(rounds)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seconds = []
    for index in range(steps + 1):  # the first step is a warm-up
        start = time.process_time()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if index:
            seconds.append(time.process_time() - start)
    step = statistics.median(seconds)
    return [seq, f"{check * 1e6:.3g}", f"{step:.4g}", f"{check / step:.1e}"]


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="base")
    parser.add_argument("--seq-lens", default="64,128,256")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "input_checks.md")
    args = parser.parse_args(argv)
    set_threads(1)
    rows = [measure(args.size, int(seq), args.batch_size, args.steps, args.calls) for seq in args.seq_lens.split(",")]
    table = markdown_table(["seq", "checks µs / forward", "training step CPU s", "checks / step"], rows)
    worst = max(float(row[3]) for row in rows)
    body = (f"{args.size} dimensions, batch {args.batch_size}, LoRA r=8 on query,value, the light head; one torch "
            f"thread, CPU time; checks: median of 7 rounds of {args.calls} calls; step: median of {args.steps} after "
            "a warm-up.\n\n" + table + f"\n\nThe checks add at most **{worst:.1e}** of a training step.\n")
    path = write_results(args.output, "forward() input checks against the step",
                         command_line("input_checks.py", argv), "cpu", body)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()

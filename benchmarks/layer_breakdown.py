"""Where a training step's time goes: each part of an encoder layer, forward and backward, per variant.

step_time.py says how much slower a LoRA step is than the frozen-base limit; this says where. It
runs the same models and the same step (forward, backward, AdamW) as step_time.py, on one torch
thread, and times with the thread's CPU clock:

- forward of each part of every encoder layer (self-attention, attention output, intermediate,
  output) between forward hooks;
- backward of each part, from the moment the gradient of its output is ready to the moment the
  gradient of its input is complete (tensor hooks; on CPU autograd runs on the calling thread);
- the rest of the step (embeddings, head, loss, optimizer), as the step minus the parts.

Figures are medians over the timed rounds (variants interleaved), per layer (the parts summed over
the layers of one step, divided by their number). The differences to the limit are what each
variant adds to each part.

    python benchmarks/layer_breakdown.py                  # seq 128, 4 roberta-base-sized layers
    python benchmarks/layer_breakdown.py --lora-dropout 0
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import step_time
import torch
from common import RESULTS_DIR, command_line, markdown_table, median, time_interleaved, write_results
from torch import nn

PARTS = ("attention.self", "attention.output", "intermediate", "output")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--variants", default="limit,peft,roberta-lora",
                        help=f"comma list from {list(step_time.VARIANTS)}; must include limit")
    parser.add_argument("--layers", type=int, default=4, help="encoder layers (the table is per layer)")
    step_time.add_model_arguments(parser)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (every variant once per round)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "layer_breakdown.md")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in step_time.VARIANTS]
    if unknown or "limit" not in args.variants:
        parser.error(f"--variants must name 'limit' and others from {list(step_time.VARIANTS)}; got {args.variants}")
    # What step_time.build_models reads.
    args.device, args.precision, args.fused_adamw = "cpu", "fp32", False
    return args


class PartTimer:
    """Adds each part's forward and backward CPU time, over all layers, to `totals` (seconds)."""

    def __init__(self, model: nn.Module) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._started: dict[int, float] = {}
        for path, module in model.named_modules():
            head, _, part = path.rpartition(".layer.")
            index, _, part = part.partition(".")
            if head and index.isdigit() and part in PARTS:
                module.register_forward_pre_hook(self._before(part), with_kwargs=True)
                module.register_forward_hook(self._after(part))

    def _before(self, part: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs = args[0] if args else kwargs["hidden_states"]
            if inputs.requires_grad:  # backward of this part ends when its input's gradient is complete
                inputs.register_hook(lambda grad: self._stop(f"{part} backward", id(module)))
            self._started[id(module)] = time.thread_time()

        return hook

    def _after(self, part: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self.totals[f"{part} forward"] += time.thread_time() - self._started[id(module)]
            output = output[0] if isinstance(output, tuple) else output
            if output.requires_grad:  # ... and starts when its output's gradient is ready
                output.register_hook(lambda grad: self._start(id(module)))

        return hook

    def _start(self, key: int) -> None:
        self._started[key] = time.thread_time()

    def _stop(self, name: str, key: int) -> None:
        self.totals[name] += time.thread_time() - self._started[key]


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Per variant: row name -> one value per timed round, in ms (parts per layer, step rows per step)."""
    torch.set_num_threads(1)  # the CPU clock of the calling thread then sees all the work
    args.seq_lens = [args.seq_len]
    models, config = step_time.build_models(args)
    batch = step_time.make_batch(config.vocab_size, args.batch_size, args.seq_len, "cpu")
    # Per variant, every call's (part -> seconds, whole step seconds), warm-up rounds included.
    calls: dict[str, list[tuple[dict[str, float], float]]] = {name: [] for name in models}

    def timed_step(name: str, model: nn.Module) -> Callable[[], None]:
        timer = PartTimer(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
        step = step_time.make_step(model, optimizer, batch, nullcontext)

        def run_once() -> None:
            timer.totals.clear()
            start = time.thread_time()
            step()
            calls[name].append((dict(timer.totals), time.thread_time() - start))

        return run_once

    time_interleaved({name: timed_step(name, model) for name, model in models.items()}, args.warmup, args.repeats)
    layers = config.num_hidden_layers
    rows: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in models}
    for name, records in calls.items():
        for parts, whole in records[args.warmup:]:  # each variant runs once per round
            for part, seconds in parts.items():
                rows[name][part].append(1000 * seconds / layers)
            rows[name]["rest of the step (per step)"].append(1000 * (whole - sum(parts.values())))
            rows[name]["whole step (per step)"].append(1000 * whole)
    return rows


def report(rows: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    variants = list(rows)
    others = [v for v in variants if v != "limit"]
    headers = ["part (ms per layer)"] + [f"{v}" for v in variants] + [f"{v} - limit" for v in others]
    order = [f"{part} {phase}" for part in PARTS for phase in ("forward", "backward")]
    order += ["rest of the step (per step)", "whole step (per step)"]
    table = []
    for row in order:
        values = {v: median(rows[v].get(row, [])) for v in variants}
        table.append([row] + [f"{values[v]:.2f}" for v in variants]
                     + [f"{values[v] - values['limit']:+.2f}" for v in others])
    settings = (
        f"Batch {args.batch_size}, seq {args.seq_len}, {args.size} dimensions, {args.layers} layers, fp32 on cpu, "
        f"one torch thread; LoRA r={args.rank}, alpha={args.alpha:g}, dropout {args.lora_dropout:g} on "
        f"{args.targets}; the models and step of step_time.py. {args.warmup} warm-up + {args.repeats} timed "
        "rounds, variants interleaved; medians of the thread's CPU time. Parts are per layer (summed over the "
        "layers of a step, divided by their number); backward of a part runs from its output's gradient to "
        "its input's complete gradient."
    )
    return "\n\n".join([settings, markdown_table(headers, table)]) + "\n"


def main(argv: Sequence[str] | None = None) -> Path:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    body = report(run(args), args)
    print(body)
    return write_results(args.output, "Where the step time goes", command_line("layer_breakdown.py", argv), "cpu",
                         body)


if __name__ == "__main__":
    main()

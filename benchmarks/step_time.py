"""Median time of one training step (forward, backward, AdamW) at roberta-base dimensions.

Variants, all on the same random base weights, the same light head and loss, the same batch:

- full:          every parameter trains.
- limit:         the frozen-base limit: no LoRA, only roberta-lora's extras train (every Linear
                 bias, every LayerNorm, the head), so backward still runs through the whole
                 encoder. This is what LoRA would cost if its low-rank branches were free.
- peft:          PEFT LoRA (r, alpha, dropout, targets as below) plus the same extras.
- roberta-lora:  `LoraWrapperRoberta` with the same settings (its defaults train the same extras).

    python benchmarks/step_time.py                    # seq 64, 128, 256; writes results/step_time.md
    python benchmarks/step_time.py --quick            # seq 128, fewer repetitions
    python benchmarks/step_time.py --device cuda      # bf16 autocast by default on a GPU

Memory: "state" is parameters + gradients + AdamW state; "activations" is what autograd saves
for backward in one step (counted with saved-tensor hooks, so it is exact and the same on any
device); on CUDA the allocator's peak during a step is reported too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from common import (
    MB,
    RESULTS_DIR,
    build_full,
    build_limit,
    build_peft,
    build_roberta_lora,
    clock_note,
    command_line,
    cuda_synchronize,
    markdown_table,
    median,
    saved_activation_bytes,
    set_threads,
    time_interleaved,
    trainable_count,
    training_state_bytes,
    verdict,
    write_results,
)
from torch import nn

VARIANTS = ("full", "limit", "peft", "roberta-lora")
GOAL_VS_PEFT = 0.98
GOAL_VS_LIMIT = 1.03


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch, base size and LoRA settings that `build_models` reads (shared with layer_breakdown.py)."""
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", choices=("base", "tiny"), default="base",
                        help="base: roberta-base dimensions; tiny: hidden 32, 2 layers (for smoke tests)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--lora-dropout", type=float, default=0.1, help="the same for PEFT and roberta-lora")
    parser.add_argument("--targets", default="query,value")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", default="64,128,256", help="comma list of sequence lengths")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {list(VARIANTS)}")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers")
    add_model_arguments(parser)
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds (every variant once per round)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument("--quick", action="store_true", help="seq 128 only, 1 warm-up and 3 timed rounds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="bf16 = autocast as accelerate's --mixed-precision bf16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--fused-adamw", action="store_true", help="torch.optim.AdamW(fused=True) for every variant")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: one per core)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "step_time.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.seq_lens, args.warmup, args.repeats = "128", 1, 3
    args.precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.seq_lens = [int(s) for s in str(args.seq_lens).split(",") if s.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; expected names from {list(VARIANTS)}")
    return args


def base_encoder(size: str, layers: int | None) -> nn.Module:
    from transformers import RobertaModel

    from roberta_lora.model.toy import roberta_base_config, toy_config

    config = roberta_base_config() if size == "base" else toy_config(400)
    if layers is not None:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    return RobertaModel(config, add_pooling_layer=False)


def build_models(args: argparse.Namespace) -> tuple[dict[str, nn.Module], Any]:
    """The variants asked for, on copies of one random base; also returns the base's config."""
    base = base_encoder(args.size, args.layers)
    targets = args.targets.split(",")
    builders: dict[str, Callable[[], nn.Module]] = {
        "full": lambda: build_full(base),
        "limit": lambda: build_limit(base),
        "peft": lambda: build_peft(base, args.rank, args.alpha, args.lora_dropout, targets),
        "roberta-lora": lambda: build_roberta_lora(base, args.rank, args.alpha, args.lora_dropout, targets),
    }
    models = {name: builders[name]().to(args.device).train() for name in args.variants}
    if "peft" in models and "roberta-lora" in models:
        ours, theirs = trainable_count(models["roberta-lora"]), trainable_count(models["peft"])
        assert ours == theirs, f"unfair comparison: roberta-lora trains {ours} parameters, PEFT {theirs}"
    return models, base.config


def make_batch(vocab_size: int, batch_size: int, seq_len: int, device: str) -> dict[str, torch.Tensor]:
    """Random token ids (seeded by the length, so every variant and script gets the same batch), full mask."""
    generator = torch.Generator().manual_seed(seq_len)
    return {
        "input_ids": torch.randint(3, vocab_size, (batch_size, seq_len), generator=generator).to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long).to(device),
        "labels": torch.randint(0, 2, (batch_size,), generator=generator).to(device),
    }


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
              autocast: Any) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()

    return step


def measure_memory(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                   autocast: Any, step: Callable[[], None], device: str) -> dict[str, float]:
    def forward() -> torch.Tensor:
        with autocast():
            return model(**batch).loss

    activations = saved_activation_bytes(model, forward)
    optimizer.zero_grad(set_to_none=True)
    memory = {"state": training_state_bytes(model, optimizer) / MB, "activations": activations / MB}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        memory["cuda_peak_over_resident"] = (torch.cuda.max_memory_allocated() - resident) / MB
    return memory


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per (sequence length, variant)."""
    models, config = build_models(args)
    optimizers = {
        name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4,
                                **({"fused": True} if args.fused_adamw else {}))
        for name, model in models.items()
    }
    device_type = torch.device(args.device).type
    autocast = ((lambda: torch.autocast(device_type, dtype=torch.bfloat16)) if args.precision == "bf16"
                else nullcontext)
    vocab = config.vocab_size
    records = []
    for seq_len in args.seq_lens:
        batch = make_batch(vocab, args.batch_size, seq_len, args.device)
        steps = {name: make_step(models[name], optimizers[name], batch, autocast) for name in models}
        times = time_interleaved(steps, args.warmup, args.repeats, cuda_synchronize(args.device))
        for name, model in models.items():
            memory = measure_memory(model, optimizers[name], batch, autocast, steps[name], args.device)
            records.append({"seq_len": seq_len, "variant": name, "trainable": trainable_count(model),
                            "wall": median(times[name].wall), "cpu": median(times[name].cpu), **memory})
    return records


def primary_clock(device: str) -> str:
    """The clock the ratios use: CPU time with one torch thread on a CPU (robust to other load), else wall."""
    return "cpu" if device == "cpu" and torch.get_num_threads() == 1 else "wall"


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cuda = args.device.startswith("cuda")
    clock = primary_clock(args.device)
    headers = ["seq", "variant", "trainable params", "median wall s/step", "median CPU s/step",
               f"vs limit ({clock})", f"vs PEFT ({clock})", "state MB", "activations MB"]
    headers += ["CUDA peak over resident MB"] if cuda else []
    rows, summary = [], []
    for seq_len in args.seq_lens:
        group = {r["variant"]: r for r in records if r["seq_len"] == seq_len}
        limit, peft = group.get("limit"), group.get("peft")
        for name, r in group.items():
            rows.append([
                seq_len, name, f"{r['trainable']:,}", f"{r['wall']:.3f}", f"{r['cpu']:.3f}",
                f"{r[clock] / limit[clock]:.3f}" if limit else "-",
                f"{r[clock] / peft[clock]:.3f}" if peft else "-",
                f"{r['state']:.0f}", f"{r['activations']:.0f}",
            ] + ([f"{r['cuda_peak_over_resident']:.0f}"] if cuda else []))
        ours = group.get("roberta-lora")
        if ours and peft:
            value = ours[clock] / peft[clock]
            summary.append(f"- seq {seq_len}: roberta-lora / PEFT = **{value:.3f}**, {verdict(value, GOAL_VS_PEFT)}")
        if ours and limit:
            value = ours[clock] / limit[clock]
            summary.append(f"- seq {seq_len}: roberta-lora / limit = **{value:.3f}**, {verdict(value, GOAL_VS_LIMIT)}")
    settings = (
        f"Batch {args.batch_size}, {args.size} dimensions"
        f"{f' ({args.layers} layers)' if args.layers else ''}, {args.precision} on {args.device}; LoRA r={args.rank}, "
        f"alpha={args.alpha:g}, dropout {args.lora_dropout:g} on {args.targets}; hidden/attention dropout 0.1 "
        f"and the light head (dropout 0.1) in every variant; AdamW{' (fused)' if args.fused_adamw else ''} lr 5e-4 "
        f"over the trainable parameters. {args.warmup} warm-up + {args.repeats} timed rounds, variants "
        f"interleaved. {clock_note()} Memory: state = parameters + gradients + AdamW state; activations = "
        "tensors saved for backward in one step."
    )
    return "\n\n".join([settings, markdown_table(headers, rows), "\n".join(summary)]) + "\n"


def main(argv: Sequence[str] | None = None) -> Path:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    set_threads(args.threads)
    records = run(args)
    body = report(records, args)
    print(body)
    return write_results(args.output, "Training step time", command_line("step_time.py", argv), args.device, body)


if __name__ == "__main__":
    main()

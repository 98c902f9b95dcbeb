"""Adapter operations on an already-loaded roberta-base-shaped base: load, switch, merge, sizes.

- load:   `bank.load_adapter(dir, name)` (read the files, check them, keep the tensors) for nine
          adapters shaped like the nine GLUE tasks' (two-class, STS-B regression, MNLI three-class),
          and `model.load_adapter(dir)` into the model's own adapter.
- switch: `bank.set_adapter(name)` in a cycle over the nine; a switch to a task with another
          number of classes rebuilds the head, reported separately.
- merge:  `merge_adapter()` / `unmerge_adapter()`, and eval-mode inference of the merged model
          against the plain base model (the same encoder and head without LoRA; goal: ratio ~1.0).
- sizes:  the adapter files, against a PEFT adapter of the same LoRA and the whole model.

    python benchmarks/adapter_ops.py            # writes results/adapter_ops.md
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS_DIR,
    EncoderClassifier,
    clock_note,
    command_line,
    cuda_synchronize,
    light_head,
    markdown_table,
    median,
    set_threads,
    time_interleaved,
    write_results,
)
from torch import nn

# The nine GLUE tasks' head shapes: classes per task (1 = regression).
GLUE_CLASSES = {"cola": 2, "sst2": 2, "mrpc": 2, "stsb": 1, "qqp": 2, "mnli": 3, "qnli": 2, "rte": 2, "wnli": 2}
GOAL_MERGED = 0.02  # merged inference within 2% of the base


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("base", "tiny"), default="base",
                        help="base: roberta-base dimensions; tiny: hidden 32, 2 layers (for smoke tests)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=5, help="timed cycles over the nine adapters")
    parser.add_argument("--batch-size", type=int, default=16, help="inference batch")
    parser.add_argument("--seq-len", type=int, default=128, help="inference sequence length")
    parser.add_argument("--warmup", type=int, default=2, help="untimed inference rounds")
    parser.add_argument("--repeats", type=int, default=7, help="timed inference rounds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: one per core)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "adapter_ops.md")
    return parser.parse_args(argv)


def base_encoder(size: str) -> nn.Module:
    from transformers import RobertaModel

    from roberta_lora.model.toy import roberta_base_config, toy_config

    torch.manual_seed(0)
    return RobertaModel(roberta_base_config() if size == "base" else toy_config(400), add_pooling_layer=False)


def make_adapters(base: nn.Module, directory: Path, rank: int) -> dict[str, Path]:
    """Save one adapter per GLUE task, each with its own random (non-zero) LoRA and head."""
    from roberta_lora.lora.injection import lora_layers
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    paths = {}
    for seed, (task, classes) in enumerate(GLUE_CLASSES.items()):
        model = LoraWrapperRoberta(model_id=copy.deepcopy(base), num_classes=classes, lora_rank=rank,
                                   lora_alpha=rank, seed=seed, task=task)
        generator = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for layer in lora_layers(model.roberta).values():
                layer.lora_B.weight.normal_(0, 0.02, generator=generator)
        paths[task] = model.save_adapter(directory / task)
    return paths


def timed(function: Callable[[], Any], synchronize: Callable[[], None] | None) -> float:
    """Seconds for one call (CPU time with one torch thread, else wall; see clock_note)."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    if synchronize:
        synchronize()
    start = clock()
    function()
    if synchronize:
        synchronize()
    return clock() - start


def measure_operations(model: Any, adapters: dict[str, Path], args: argparse.Namespace) -> list[list[str]]:
    sync = cuda_synchronize(args.device)
    loads, replaces, same_head, new_head, merges, unmerges = [], [], [], [], [], []
    for cycle in range(args.cycles + 1):  # the first cycle warms up
        record = cycle > 0
        for task, path in adapters.items():
            if task in model.adapters:
                model.delete_adapter(task)
            seconds = timed(partial(model.load_adapter, path, task), sync)
            if record:
                loads.append(seconds)
        # Into the active ("default", two classes like sst2) adapter: same shapes, tensors replaced in place.
        seconds = timed(partial(model.model.load_adapter, adapters["sst2"]), sync)
        if record:
            replaces.append(seconds)
        previous = model.adapter_config.num_classes
        for task in adapters:
            seconds = timed(partial(model.set_adapter, task), sync)
            if record:
                (same_head if GLUE_CLASSES[task] == previous else new_head).append(seconds)
            previous = GLUE_CLASSES[task]
        if record:
            merges.append(timed(model.merge_adapter, sync))
            unmerges.append(timed(model.unmerge_adapter, sync))
        model.set_adapter("default")

    def row(name: str, values: list[float], note: str) -> list[str]:
        return [name, f"{1000 * median(values):.1f}", f"{1000 * max(values):.1f}", str(len(values)), note]

    return [
        row("load_adapter(dir, name)", loads, "read + check the files, keep the tensors (not active yet)"),
        row("load_adapter(dir) into the active adapter", replaces, "same shapes: tensors copied in place"),
        row("set_adapter, same head shape", same_head, "stash the outgoing tensors, copy the new ones in"),
        row("set_adapter, other number of classes", new_head, "as above, and the head is rebuilt"),
        row("merge_adapter()", merges, "W += (alpha/r) B @ A on every LoRA layer"),
        row("unmerge_adapter()", unmerges, "restore the saved base weights exactly"),
    ]


def measure_inference(base: nn.Module, model: Any, args: argparse.Namespace) -> tuple[list[list[str]], float]:
    """Eval-mode forward (inference_mode) of the plain base, the merged model and the unmerged one."""
    plain = EncoderClassifier(copy.deepcopy(base), light_head(base.config)).to(args.device).eval()
    merged = model.eval()
    unmerged = copy.deepcopy(model).eval()
    merged.merge_adapter()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, base.config.vocab_size, (args.batch_size, args.seq_len), generator=generator).to(args.device)
    mask = torch.ones_like(ids)

    def forward(m: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return m(input_ids=ids, attention_mask=mask)

        return run

    times = time_interleaved({"plain base": forward(plain), "merged": forward(merged), "unmerged": forward(unmerged)},
                             args.warmup, args.repeats, cuda_synchronize(args.device))
    clock = "cpu" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall"
    base_time = median(getattr(times["plain base"], clock))
    rows = []
    for name, timing in times.items():
        value = median(getattr(timing, clock))
        rows.append([name, f"{median(timing.wall):.3f}", f"{median(timing.cpu):.3f}", f"{value / base_time:.3f}"])
    merged.unmerge_adapter()
    return rows, median(getattr(times["merged"], clock)) / base_time


def file_sizes(base: nn.Module, adapters: dict[str, Path], rank: int, scratch: Path) -> list[list[str]]:
    import peft

    from roberta_lora.model.config import adapter_size_bytes

    ours = adapters["sst2"]
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=rank, lora_alpha=rank,
                                                                          target_modules=["query", "value"]))
    peft_model.save_pretrained(scratch / "peft")
    peft_bytes = sum(p.stat().st_size for p in (scratch / "peft").iterdir() if p.is_file())
    full_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    return [
        ["roberta-lora adapter (sst2: LoRA + biases + LayerNorms + light head, fp32)",
         f"{adapter_size_bytes(ours):,}",
         f"adapter.safetensors {(ours / 'adapter.safetensors').stat().st_size:,} + adapter_config.json "
         f"{(ours / 'adapter_config.json').stat().st_size:,}"],
        ["PEFT adapter, same LoRA only (no biases, LayerNorms or head)", f"{peft_bytes:,}",
         "adapter_model.safetensors + adapter_config.json + README.md"],
        ["whole encoder, fp32 tensors", f"{full_bytes:,}", "what a fully fine-tuned model would store"],
    ]


def main(argv: Sequence[str] | None = None) -> Path:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    set_threads(args.threads)
    from roberta_lora.adapters.bank import AdapterBank
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    base = base_encoder(args.size)
    with tempfile.TemporaryDirectory(prefix="adapter-ops-") as scratch:
        adapters = make_adapters(base, Path(scratch), args.rank)
        model = LoraWrapperRoberta(model_id=copy.deepcopy(base), num_classes=2, lora_rank=args.rank,
                                   lora_alpha=args.rank, seed=0, task="sst2").to(args.device).eval()
        operations = measure_operations(AdapterBank(model), adapters, args)
        model.load_adapter(adapters["sst2"])
        inference, merged_ratio = measure_inference(base, model, args)
        sizes = file_sizes(base, adapters, args.rank, Path(scratch))
    clock = "CPU" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall"
    body = "\n\n".join([
        f"{args.size} dimensions on {args.device}, LoRA r={args.rank} on query,value; nine adapters shaped like the "
        f"GLUE tasks' ({', '.join(f'{t} {c}' for t, c in GLUE_CLASSES.items())} classes). {clock_note()}",
        f"## Load and switch ({clock} time, {args.cycles} cycles over the nine adapters after one warm-up cycle)",
        markdown_table(["operation", "median ms", "max ms", "samples", "what it does"], operations),
        f"## Inference, batch {args.batch_size} x {args.seq_len}, eval mode under `torch.inference_mode`",
        markdown_table(["model", "median wall s", "median CPU s", f"vs plain base ({clock})"], inference),
        f"- merged / plain base = **{merged_ratio:.3f}**, "
        f"{'met' if abs(merged_ratio - 1) <= GOAL_MERGED else 'NOT met'} (goal: within {GOAL_MERGED:.0%} of 1)",
        "## File sizes",
        markdown_table(["what", "bytes", "files"], sizes),
    ])
    print(body)
    return write_results(args.output, "Adapter operations", command_line("adapter_ops.py", argv), args.device, body)


if __name__ == "__main__":
    main()

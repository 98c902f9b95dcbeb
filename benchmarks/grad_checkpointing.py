"""Peak memory and time of one training step (forward, backward, AdamW) with and without gradient checkpointing.

The model is roberta-lora's `LoraWrapperRoberta` at roberta-base dimensions (random weights), LoRA
r=8 / alpha 8 / dropout 0.1 on query,value, batch 4 at sequence length 512, one torch thread.
Checkpointing is switched on by `roberta_lora.training.loop.enable_gradient_checkpointing`, the
function `roberta-lora train --gradient-checkpointing` calls, so this measures what the flag does.

    python benchmarks/grad_checkpointing.py                # seq 512, batch 4, 1 + 3 steps, 2 rounds; ~12 min on 2 CPU cores
    python benchmarks/grad_checkpointing.py --quick        # seq 128, batch 2, 1 + 2 steps, 1 round
    python benchmarks/grad_checkpointing.py --seq 256 --batch-size 8

Each variant runs in its own Python process (the script re-invokes itself with the hidden
`--part`), as `roberta-lora train` does: a process's peak resident memory
(`getrusage(RUSAGE_SELF).ru_maxrss`) only ever grows, so in one process the second variant would
inherit the first one's peak, and the two would share the allocator's state (measured in one
process, the checkpointed step reuses pages the plain step faulted in and looks faster than it is
alone). Each process reports the RSS once the model and optimizer are built, the peak RSS over its
steps, the difference (what a step adds: activations, gradients, AdamW state, allocator slack) and
its step times, split into forward and backward (with checkpointing, backward includes each layer's
recompute). The encoder goes straight into the wrapper (no spare copy), so building peaks well below
a step. `--rounds` processes per variant run in the order off, on, on, off, ... (a busy spell on the
shared machine then slows both), and the medians pool their timed steps.

RSS depends on the allocator as well as on the tensors: glibc's malloc raises its mmap threshold each
time a large block is freed and then serves later large tensors from its heap, which keeps freed
memory resident. So each variant is also measured once with a fixed mmap threshold
(`MALLOC_MMAP_THRESHOLD_`, `--memory-steps` untimed steps), where every large tensor is mapped when
allocated and unmapped when freed, so the peak RSS follows the live tensors.

Autograd's saved tensors are not in the table. A saved-tensor hook counts them exactly for a plain
step (step_time.py's "activations"), but non-reentrant checkpointing installs its own hooks inside
each checkpointed layer, which take precedence: an outer hook then sees only what is saved outside
the encoder layers, not the layer inputs the checkpoints hold nor the layer recomputed in
backward. The notes under the table give both counts for reference.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import step_time
import torch
from common import (
    MB,
    RESULTS_DIR,
    clock_note,
    command_line,
    markdown_table,
    median,
    saved_activation_bytes,
    set_threads,
    trainable_count,
    write_results,
)
from torch import nn

VARIANTS = ("off", "on")  # gradient checkpointing off / on
FIXED_MMAP_THRESHOLD = 128 * 1024  # glibc's initial mmap threshold, kept fixed by setting it
RESULT_PREFIX = "GRAD_CHECKPOINTING_RESULT "  # marks the child's one JSON line among transformers' messages


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=512, help="sequence length")
    step_time.add_model_arguments(parser)
    parser.set_defaults(batch_size=4)
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per process")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant (order off, on, on, off, ...)")
    parser.add_argument("--memory-steps", type=int, default=2,
                        help="untimed steps of each fixed-mmap process (the first also allocates gradients and AdamW state)")
    parser.add_argument("--quick", action="store_true", help="seq 128, batch 2, 1 warm-up + 2 timed steps, 1 round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--default-malloc-only", action="store_true",
                        help="skip the two processes with a fixed malloc mmap threshold")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "grad_checkpointing.md")
    # Set by the parent for its child processes.
    parser.add_argument("--part", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count-saved", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seq, args.batch_size, args.warmup, args.repeats, args.rounds = 128, 2, 1, 2, 1
    return args


# ----------------------------------------------------------------------------- memory of this process
def current_rss_bytes() -> int:
    """Resident set size now (Linux: /proc/self/statm, in pages)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The highest resident set size this process has had (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------- one variant (child process)
def build(args: argparse.Namespace, checkpointing: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    """roberta-lora's model on a random roberta-base-sized encoder, and its AdamW.

    common.build_roberta_lora deep-copies the base (right for step_time.py, which builds four
    variants on one base); here a spare copy of the 125M-parameter encoder would set the process's
    peak before the first step, so the encoder goes straight into the wrapper.
    """
    from roberta_lora.model.wrapper import LoraWrapperRoberta
    from roberta_lora.training.loop import enable_gradient_checkpointing

    model = LoraWrapperRoberta(model_id=step_time.base_encoder(args.size, args.layers), num_classes=2,
                               lora_rank=args.rank, lora_alpha=args.alpha, lora_dropout=args.lora_dropout,
                               targets=args.targets, seed=0).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    encoder = model.roberta
    flag = "is_activation_checkpointing" if hasattr(encoder, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert bool(getattr(encoder, flag)) == checkpointing, f"{flag} is {getattr(encoder, flag)}, expected {checkpointing}"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    return model, optimizer


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build one variant, run its steps, return step times (wall, CPU, forward / backward CPU) and RSS."""
    model, optimizer = build(args, args.part == "on")
    batch = step_time.make_batch(model.config.vocab_size, args.batch_size, args.seq, "cpu")
    gc.collect()
    rss_built, peak_built = current_rss_bytes(), peak_rss_bytes()
    warmup, repeats = (args.memory_steps, 0) if args.memory_only else (args.warmup, args.repeats)
    times: dict[str, list[float]] = {"wall": [], "cpu": [], "forward": [], "backward": []}
    for index in range(warmup + repeats):
        wall, start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        forward_done = time.process_time()
        loss.backward()  # with checkpointing: each encoder layer's forward again, then its backward
        backward_done = time.process_time()
        optimizer.step()
        if index >= warmup:
            times["wall"].append(time.perf_counter() - wall)
            times["cpu"].append(time.process_time() - start)
            times["forward"].append(forward_done - start)
            times["backward"].append(backward_done - forward_done)
    record = {**times, "rss_built": rss_built, "peak_built": peak_built, "peak": peak_rss_bytes(),
              "trainable": trainable_count(model)}
    if args.count_saved:  # after the steps: one more step's memory cannot raise the peak
        optimizer.zero_grad(set_to_none=True)
        # Exact without checkpointing; only what is saved outside the layers with it (module docstring).
        record["outer_hook_bytes"] = saved_activation_bytes(model, lambda: model(**batch).loss)
    return record


def run_child(argv: Sequence[str], extra: Sequence[str], fixed_mmap: bool = False) -> dict[str, Any]:
    """Run this script with `extra` arguments in a fresh interpreter and parse its result line."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if fixed_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = str(FIXED_MMAP_THRESHOLD)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    name = f"{' '.join(extra)}{' (fixed mmap)' if fixed_mmap else ''}"
    if done.returncode != 0:
        raise RuntimeError(f"the {name} process failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if len(lines) != 1:
        raise RuntimeError(f"the {name} process printed {len(lines)} result lines; stdout:\n{done.stdout[-4000:]}")
    return json.loads(lines[0][len(RESULT_PREFIX):])


# ----------------------------------------------------------------------------- report (parent process)
def step_mb(record: dict[str, Any]) -> float:
    """Peak RSS during the steps minus RSS once built, in MB."""
    return (record["peak"] - record["rss_built"]) / MB


def report(runs: dict[str, list[dict[str, Any]]], fixed: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    clock = "cpu" if args.threads == 1 else "wall"
    pooled = {v: {k: [x for r in runs[v] for x in r[k]] for k in ("wall", "cpu", "forward", "backward")}
              for v in VARIANTS}
    medians = {v: {k: median(values) for k, values in pooled[v].items()} for v in VARIANTS}
    # Memory of a variant: its largest step over the rounds (the processes differ by a few MB).
    memory = {v: max(runs[v], key=step_mb) for v in VARIANTS}
    headers = ["gradient checkpointing", "trainable params", "median wall s/step", "median CPU s/step",
               "forward CPU s", "backward CPU s", "RSS after build MB", "peak RSS MB", "peak over build MB"]
    headers += ["peak RSS MB, fixed mmap", "peak over build MB, fixed mmap"] if fixed else []
    rows = []
    for v in VARIANTS:
        t, m = medians[v], memory[v]
        rows.append([v, f"{m['trainable']:,}", f"{t['wall']:.2f}", f"{t['cpu']:.2f}", f"{t['forward']:.2f}",
                     f"{t['backward']:.2f}", f"{m['rss_built'] / MB:.0f}", f"{m['peak'] / MB:.0f}", f"{step_mb(m):.0f}"]
                    + ([f"{fixed[v]['peak'] / MB:.0f}", f"{step_mb(fixed[v]):.0f}"] if fixed else []))
    ratio = lambda key: medians["on"][key] / medians["off"][key]  # noqa: E731
    off, on = memory["off"], memory["on"]
    rows.append(["**on / off**", "", f"{ratio('wall'):.3f}", f"**{ratio('cpu'):.3f}**", f"{ratio('forward'):.3f}",
                 f"{ratio('backward'):.3f}", f"{on['rss_built'] / off['rss_built']:.3f}",
                 f"{on['peak'] / off['peak']:.3f}", f"**{step_mb(on) / step_mb(off):.3f}**"]
                + ([f"{fixed['on']['peak'] / fixed['off']['peak']:.3f}",
                    f"{step_mb(fixed['on']) / step_mb(fixed['off']):.3f}"] if fixed else []))

    # If the recompute costs one more forward, on / off = (2 F + B + rest) / (F + B + rest), at most: the
    # embeddings and the head are not recomputed. With a frozen base backward computes no weight gradients,
    # so B is about F and the bound is near 1.5, not the 4/3 of full fine-tuning (B about 2 F).
    plain = medians["off"]
    bound = (plain["cpu"] + plain["forward"]) / plain["cpu"]
    recompute = medians["on"]["backward"] - plain["backward"]
    live = (f"; live tensors (fixed mmap) {step_mb(fixed['off']):.0f} -> {step_mb(fixed['on']):.0f} MB, "
            f"{step_mb(fixed['on']) / step_mb(fixed['off']):.2f}x" if fixed else "")
    lines = [
        f"**Conclusion:** at batch {args.batch_size} x seq {args.seq}, gradient checkpointing brings the memory a step "
        f"adds from {step_mb(off):.0f} to {step_mb(on):.0f} MB (**{step_mb(on) / step_mb(off):.2f}x**; absolute peak "
        f"RSS {off['peak'] / MB:.0f} -> {on['peak'] / MB:.0f} MB, {on['peak'] / off['peak']:.2f}x{live}) and makes a "
        f"step **{ratio(clock):.2f}x** as long ({clock} clock). The recompute adds {recompute:.2f} s to backward, "
        f"against a plain forward of {plain['forward']:.2f} s; one more full forward would give at most {bound:.2f}x "
        f"(here backward is {plain['backward'] / plain['forward']:.2f}x the forward, as a frozen base computes no "
        "weight gradients; in full fine-tuning it is about 2x, which gives the usual 1.33x).",
        "",
        f"- Timed steps, {clock} s, process by process: " + "; ".join(
            f"{v} {', '.join(f'{x:.2f}' for x in r[clock])}" for v in VARIANTS for r in runs[v]) + ".",
        "- Peak over build MB, process by process: " + "; ".join(
            f"{v} {', '.join(f'{step_mb(r):.0f}' for r in runs[v])}" for v in VARIANTS) + " (the table: the larger).",
        f"- Saved-tensor hook, for reference: a plain step saves {runs['off'][0]['outer_hook_bytes'] / MB:.0f} MB for "
        f"backward (exact); with checkpointing an outer hook sees only {runs['on'][0]['outer_hook_bytes'] / MB:.0f} MB, "
        "the tensors saved outside the checkpointed layers (inside them checkpointing's own hooks take over), so it "
        "is not the step's activation memory and is left out of the table.",
    ]
    for label, r in [(v, r) for v in VARIANTS for r in runs[v]] + [(f"{v}, fixed mmap", r) for v, r in fixed.items()]:
        if r["peak"] <= r["peak_built"]:
            lines.append(f"- WARNING ({label}): the peak was reached while building ({r['peak_built'] / MB:.0f} MB), "
                         "so the step's own peak is hidden under it.")
    settings = (
        f"Batch {args.batch_size} x seq {args.seq}, {args.size} dimensions{f' ({args.layers} layers)' if args.layers else ''}, "
        f"fp32 on cpu; `LoraWrapperRoberta` with LoRA r={args.rank}, alpha={args.alpha:g}, dropout {args.lora_dropout:g} "
        f"on {args.targets}, hidden/attention dropout 0.1, the light head; AdamW lr 5e-4 over the trainable parameters. "
        "\"on\" = `enable_gradient_checkpointing(model)` (non-reentrant, every encoder layer). Each variant in its own "
        f"process, {args.rounds} process(es) per variant in the order {', '.join(round_order(args.rounds))}, each "
        f"{args.warmup} warm-up + {args.repeats} timed steps; medians over all timed steps of a variant; forward / "
        f"backward = the step's split (backward includes the recompute). {clock_note()} Memory: resident set size; "
        "\"peak over build\" = peak RSS during the steps minus the RSS once model and optimizer were built. Default "
        "malloc is glibc's, as `roberta-lora train` runs"
        + (f"; \"fixed mmap\" = one more process per variant ({args.memory_steps} untimed steps) with "
           f"`MALLOC_MMAP_THRESHOLD_={FIXED_MMAP_THRESHOLD}`, so every large tensor is mapped on allocation and "
           "unmapped when freed and the RSS follows the live tensors (by default glibc raises the threshold as "
           "tensors are freed and then serves them from its heap, which keeps freed memory resident)."
           if fixed else ".")
    )
    return "\n\n".join([settings, markdown_table(headers, rows), "\n".join(lines)]) + "\n"


def round_order(rounds: int) -> list[str]:
    """off, on, on, off, off, on, ...: each variant first in every other round."""
    return [v for r in range(rounds) for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1])]


def main(argv: Sequence[str] | None = None) -> Path | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    set_threads(args.threads)
    if args.part is not None:  # a child: measure one variant, print one line
        print(RESULT_PREFIX + json.dumps(measure(args)), flush=True)
        return None
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for variant in round_order(args.rounds):
        first = not runs[variant]
        runs[variant].append(run_child(argv, ["--part", variant, *(["--count-saved"] if first else [])]))
    fixed = ({} if args.default_malloc_only else
             {v: run_child(argv, ["--part", v, "--memory-only"], fixed_mmap=True) for v in VARIANTS})
    body = report(runs, fixed, args)
    print(body)
    return write_results(args.output, "Gradient checkpointing: peak memory and step time",
                         command_line("grad_checkpointing.py", argv), "cpu", body)


if __name__ == "__main__":
    main()

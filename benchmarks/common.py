"""What the benchmark scripts share: the machine description, interleaved timing, markdown output,
and the comparison models built on the same base weights as roberta-lora.

Timing on a shared machine is noisy, so every script runs its variants interleaved (A, B, C, A,
B, C, ... with the starting variant rotating each round) and reports medians and ratios measured
in the same run: background load then slows all variants alike instead of one of them.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
REPO_DIR = BENCHMARKS_DIR.parent
SHARED_GLUE = REPO_DIR.parent / "shared" / "data" / "glue"
MB = 1024 * 1024


# ----------------------------------------------------------------------------- machine and command
def set_threads(threads: int | None) -> None:
    """Use `threads` intra-op threads (None: torch's default, one per core)."""
    if threads is not None:
        torch.set_num_threads(threads)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str = "cpu") -> str:
    """One line: CPU (or GPU), core count, threads used, library versions."""
    import transformers

    parts = [f"{cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.insert(0, torch.cuda.get_device_name(torch.device(device)))
    versions = [f"Python {platform.python_version()}", f"torch {torch.__version__}",
                f"transformers {transformers.__version__}"]
    try:
        import peft

        versions.append(f"peft {peft.__version__}")
    except ImportError:
        pass
    return "; ".join(parts + [", ".join(versions)])


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run, e.g. `python benchmarks/step_time.py --quick`."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)])


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- timing
@dataclass
class Timings:
    """Seconds per call: wall clock, and CPU time of this process (all its threads).

    With one torch thread the CPU time is the work itself and barely moves when other processes
    share the cores, while the wall clock then includes waiting for a core; with several threads
    it also counts threads spinning at barriers. Both are reported; see `clock_note`.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def time_interleaved(
    variants: dict[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, Timings]:
    """Time each variant in rounds that run every variant once.

    The first `warmup` rounds are not recorded. The order inside a round rotates, so no variant
    always runs right after the same other one (allocator and cache state carry over).
    """
    names = list(variants)
    times = {name: Timings() for name in names}
    sync = synchronize or (lambda: None)
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            variants[name]()
            sync()
            if round_index >= warmup:
                times[name].wall.append(time.perf_counter() - wall)
                times[name].cpu.append(time.process_time() - cpu)
    return times


def clock_note() -> str:
    if torch.get_num_threads() == 1:
        return ("One torch thread: CPU time (process time) is the work done and is the clock to compare on a "
                "shared machine; wall time also counts waiting for a core.")
    return ("Several torch threads: wall time is the clock to compare; CPU time also counts threads "
            "spinning at barriers and is shown for reference.")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cuda_synchronize(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


# ----------------------------------------------------------------------------- markdown
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, goal: float, below: bool = True) -> str:
    """"met" / "not met" for a ratio against a goal (`below`: the ratio must be <= goal)."""
    ok = value <= goal if below else value >= goal
    return f"{'met' if ok else 'NOT met'} (goal {'<=' if below else '>='} {goal:g})"


def write_results(path: Path, title: str, command: str, device: str, body: str) -> Path:
    """Write a results file: title, command, machine, load, then `body` (tables and notes)."""
    header = (
        f"# {title}\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {machine_description(device)}\n\n"
        f"Load average (1/5/15 min) at the end: {load_average()}. Figures on a shared machine are noisy; "
        "compare the ratios, which were measured side by side in the same run.\n\n"
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.\n\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body.rstrip() + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- comparison models
class EncoderClassifier(nn.Module):
    """An encoder (a plain `RobertaModel` or a PEFT-wrapped one) under roberta-lora's own head and loss.

    Used for full fine-tuning, the frozen-base limit and PEFT, so every variant runs exactly the
    head and loss that `LoraWrapperRoberta` runs and only the encoder differs.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        logits = self.classifier(hidden)  # (B, C)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def mark_extras_trainable(model: nn.Module) -> None:
    """Freeze everything, then train roberta-lora's default extras: every Linear bias, every LayerNorm,
    and the head (`classifier`). LoRA factors, if any, are switched on by the caller."""
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.requires_grad_(True)
    model.get_submodule("classifier").requires_grad_(True)


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def light_head(config: Any, num_classes: int = 2, dropout: float = 0.1, seed: int = 0) -> nn.Module:
    from roberta_lora.model.heads import build_classification_head

    return build_classification_head("light", config, num_classes, dropout, torch.Generator().manual_seed(seed))


def build_full(base: nn.Module) -> nn.Module:
    """Full fine-tuning: every parameter trains."""
    import copy

    model = EncoderClassifier(copy.deepcopy(base), light_head(base.config))
    model.requires_grad_(True)
    return model


def build_limit(base: nn.Module) -> nn.Module:
    """The frozen-base limit: no LoRA, the same extras as roberta-lora (biases, LayerNorms, head).

    Backward still runs through the whole encoder (the biases and LayerNorms of layer 0 need it),
    so this is what LoRA training would cost if the low-rank branches were free.
    """
    import copy

    model = EncoderClassifier(copy.deepcopy(base), light_head(base.config))
    mark_extras_trainable(model)
    return model


def build_peft(base: nn.Module, rank: int, alpha: float, dropout: float, targets: Sequence[str]) -> nn.Module:
    """PEFT LoRA on the same targets, plus the same extras set by hand (PEFT's `bias="all"` is not the
    same set: it trains LayerNorm biases but not LayerNorm weights)."""
    import copy

    import peft

    encoder = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none"),
    )
    model = EncoderClassifier(encoder, light_head(base.config))
    mark_extras_trainable(model)
    for name, parameter in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            parameter.requires_grad_(True)
    return model


def build_roberta_lora(base: nn.Module, rank: int, alpha: float, dropout: float, targets: Sequence[str]) -> nn.Module:
    """roberta-lora's model with its defaults (biases, LayerNorms and the light head train)."""
    import copy

    from roberta_lora.model.wrapper import LoraWrapperRoberta

    return LoraWrapperRoberta(model_id=copy.deepcopy(base), num_classes=2, lora_rank=rank, lora_alpha=alpha,
                              lora_dropout=dropout, targets=",".join(targets), seed=0)


# ----------------------------------------------------------------------------- memory
def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters + gradients of the trainable ones + optimizer state, in bytes."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(
        t.numel() * t.element_size()
        for per_param in optimizer.state.values() for t in per_param.values() if torch.is_tensor(t)
    )
    return params + grads + state


def saved_activation_bytes(model: nn.Module, run_forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward pass (each storage
    counted once, parameters left out): the activation memory a training step holds at its peak."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in param_storages and key not in seen:
            seen[key] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = run_forward()
    loss.backward()
    return sum(seen.values())

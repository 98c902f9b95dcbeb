"""QLoRA check for a GPU machine: does a 4-bit run train, does its adapter load on a full-precision
base, and how much memory does it take next to 16-bit LoRA?

Needs CUDA and bitsandbytes; runs offline on a random roberta-base-shaped checkpoint (or --model).

    python benchmarks/qlora_check.py                   # 30 steps each, batch 16 x 128 tokens
    python benchmarks/qlora_check.py --model /path/to/roberta-base --steps 50

Each run overfits one fixed batch (so "it trains" means the loss falls) and reports the peak
CUDA memory of loading plus training. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from roberta_lora.model.quantization import check_qlora_options
from roberta_lora.model.toy import roberta_base_config
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.training.optim import build_optimizer


def make_base(directory: Path) -> Path:
    """A roberta-base-shaped checkpoint with random weights (no tokenizer needed: inputs are random ids)."""
    from transformers import RobertaModel

    torch.manual_seed(0)
    RobertaModel(roberta_base_config(), add_pooling_layer=False).save_pretrained(directory)
    return directory


def train_run(base: str, mode: str, optim: str, steps: int, batch: tuple[torch.Tensor, ...], lr: float) -> dict:
    """Load, train `steps` steps on one batch; return losses, timing, memory and the model."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start_memory = torch.cuda.memory_allocated()
    if mode == "16bit":
        model = LoraWrapperRoberta(model_id=base, num_classes=2, seed=0, lora_dropout=0.0).to("cuda", torch.bfloat16)
    else:
        model = LoraWrapperRoberta(model_id=base, num_classes=2, seed=0, lora_dropout=0.0, quantize=mode)
    weights_memory = torch.cuda.memory_allocated() - start_memory
    optimizer = build_optimizer(model, optim, lr=lr)
    ids, mask, labels = batch
    model.train()
    losses = []
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / steps
    result = {
        "mode": mode, "optimizer": optim, "first_loss": losses[0], "last_loss": losses[-1],
        "trains": losses[-1] < losses[0], "seconds_per_step": round(seconds, 4),
        "weights_mib": round(weights_memory / 2**20, 1),
        "peak_mib": round((torch.cuda.max_memory_allocated() - start_memory) / 2**20, 1),
    }
    return {"result": result, "model": model.eval()}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base checkpoint dir (default: a random roberta-base-shaped one)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optim", default="paged_adamw_8bit", help="optimizer of the 4-bit run (QLoRA: paged)")
    args = parser.parse_args()
    check_qlora_options("4bit", args.optim)  # clear error without CUDA / bitsandbytes

    with tempfile.TemporaryDirectory() as tmp:
        base = args.model or str(make_base(Path(tmp) / "base"))
        generator = torch.Generator().manual_seed(1)
        ids = torch.randint(3, 1000, (args.batch_size, args.length), generator=generator).cuda()
        batch = (ids, torch.ones_like(ids), torch.randint(0, 2, (args.batch_size,), generator=generator).cuda())

        with torch.enable_grad():
            sixteen = train_run(base, "16bit", "adamw", args.steps, batch, args.lr)
        del sixteen["model"]
        with torch.enable_grad():
            four = train_run(base, "4bit", args.optim, args.steps, batch, args.lr)
        quantized = four.pop("model")

        # The QLoRA adapter on a full-precision base: it loads (same fingerprint) and predicts alike.
        quantized.save_adapter(Path(tmp) / "adapter")
        size = (Path(tmp) / "adapter" / "adapter.safetensors").stat().st_size
        full = LoraWrapperRoberta.from_adapter(Path(tmp) / "adapter", model_id=base).cuda()
        probe = ids[:4]
        q_logits, f_logits = quantized(probe).logits.float(), full(probe).logits.float()
        report = {
            "device": torch.cuda.get_device_name(),
            "lora_16bit": sixteen["result"],
            "qlora_4bit": four["result"],
            "memory_ratio_4bit_vs_16bit": round(four["result"]["peak_mib"] / sixteen["result"]["peak_mib"], 3),
            "adapter_bytes": size,
            "adapter_on_full_precision_base": {
                "loads": True,
                "max_abs_logit_difference_vs_4bit": float((q_logits - f_logits).abs().max()),
                "same_argmax": bool((q_logits.argmax(-1) == f_logits.argmax(-1)).all()),
            },
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

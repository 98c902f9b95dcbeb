"""CLI: `params` (what a configuration trains) and `inspect` (what an adapter folder holds)."""

from __future__ import annotations

import argparse
import json

from roberta_lora.choices import HEAD_KINDS, TASK_TYPES
from roberta_lora.cli.output import print_json
from roberta_lora.model.config import adapter_size_bytes, read_adapter_config, read_weights_header
from roberta_lora.sources import resolve_adapter


def register(subparsers: argparse._SubParsersAction) -> None:
    params = subparsers.add_parser("params", help="count trainable vs total parameters for a configuration")
    params.add_argument("--model", default="roberta-base", help="hub id or local checkpoint dir")
    params.add_argument("--task-type", default="glue", choices=TASK_TYPES, help="head: GLUE classification or SQuAD span")
    params.add_argument("--num-classes", type=int, default=2, help="GLUE classes (1 = regression); default 2")
    params.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    params.add_argument("--targets", default="query,value", help="query,value | all-linear | a comma list")
    params.add_argument("--head", default="light", choices=HEAD_KINDS, help="GLUE head (default light)")
    params.set_defaults(handler=run_params)

    inspect = subparsers.add_parser("inspect", help="show an adapter's configuration, metrics and size")
    inspect.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json + adapter.safetensors) or a Hub repo id")
    inspect.set_defaults(handler=run_inspect)


def run_params(args: argparse.Namespace) -> int:
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    model = LoraWrapperRoberta(
        task_type=args.task_type, num_classes=args.num_classes, model_id=args.model,
        lora_rank=args.rank, targets=args.targets, head=args.head,
    )
    trainable, total = model.parameter_counts()
    print_json({
        "trainable": trainable, "total": total, "trainable_percent": round(100 * trainable / total, 4),
        "lora_modules": len(model.replaced_modules), "adapter_megabytes_fp32": round(trainable * 4 / 1e6, 3),
    })
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    args.adapter = str(resolve_adapter(args.adapter))  # a folder, or a hub repo id (cached offline)
    config, digest = read_adapter_config(args.adapter)
    read_weights_header(args.adapter)  # a corrupt tensors file is an error here, not a clean-looking report
    data = json.loads(config.to_json())
    data["size_bytes"] = adapter_size_bytes(args.adapter)
    data["weights_sha256"] = digest
    print_json(data)
    return 0

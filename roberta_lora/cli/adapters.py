"""CLI: `merge` (standalone checkpoint), `export-peft` and `import-peft` (PEFT LoRA adapters)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from roberta_lora.choices import TASK_TYPES
from roberta_lora.cli.output import print_json
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError
from roberta_lora.sources import resolve_adapter

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    merge = subparsers.add_parser(
        "merge", help="fold an adapter into its base and write a standalone checkpoint",
        description="SQuAD -> RobertaForQuestionAnswering; GLUE --head roberta -> RobertaForSequenceClassification; "
                    "GLUE light head -> an encoder checkpoint plus light_head.safetensors (load_merged reads it).",
    )
    merge.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json + adapter.safetensors) or a Hub repo id")
    merge.add_argument("--output", required=True, help="folder to write (must be new or empty unless --overwrite)")
    merge.add_argument("--model", help="base checkpoint (default: the base recorded in the adapter)")
    merge.add_argument("--overwrite", action="store_true", help="replace the files of an existing --output")
    merge.add_argument("--allow-base-mismatch", action="store_true", help="merge even if the base fingerprint differs")
    merge.set_defaults(handler=run_merge)

    export = subparsers.add_parser(
        "export-peft", help="write a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)",
        description="Loads with peft.PeftModel.from_pretrained on RobertaForQuestionAnswering (SQuAD) or "
                    "RobertaForSequenceClassification (GLUE, --head roberta). Light-head adapters are refused.",
    )
    export.add_argument("--adapter", required=True, help="our adapter folder, or a Hub repo id")
    export.add_argument("--output", required=True, help="PEFT adapter folder to write")
    export.add_argument("--model", help="base_model_name_or_path to record (default: the adapter's base)")
    export.add_argument("--overwrite", action="store_true", help="replace the files of an existing --output")
    export.set_defaults(handler=run_export_peft)

    imp = subparsers.add_parser(
        "import-peft", help="convert a PEFT LoRA adapter (RoBERTa sequence classification / QA) into our format",
    )
    imp.add_argument("--peft", required=True, help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    imp.add_argument("--output", required=True, help="our adapter folder to write")
    imp.add_argument("--model", help="base checkpoint (default: the PEFT adapter's base_model_name_or_path)")
    imp.add_argument("--task", help="task name or TOML path (e.g. mnli, squad_v2): label names, SQuAD version")
    imp.add_argument("--task-type", choices=TASK_TYPES, help="override the task type")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing adapter in --output")
    imp.set_defaults(handler=run_import_peft)


# What an earlier output of each command holds: --overwrite replaces only such a folder.
OWN_FILES = {"merged checkpoint": "roberta_lora_merge.json", "PEFT adapter": "adapter_model.safetensors",
             "converted adapter": "adapter.safetensors"}


def check_output(output: str, sources: list[str | None], overwrite: bool, what: str) -> None:
    """Refuse to write `what` into one of the folders it is made from (the adapter, its base), over existing
    files without --overwrite, and even with it over a folder that is not an earlier output of this kind."""
    out = Path(output)
    if not out.exists():
        return
    for source in filter(None, sources):
        if Path(source).exists() and out.resolve() == Path(source).resolve():
            raise ConfigError(f"--output {output} is {source}, which the {what} is made from; it would replace those "
                              "files: choose another --output")
    if not out.is_dir():
        raise ConfigError(f"--output {output} is a file; choose a folder name")
    if any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--output {output} exists and is not empty; choose a new --output or pass --overwrite")
        if not (out / OWN_FILES[what]).is_file():
            raise ConfigError(f"--output {output} is not an earlier {what} (it has no {OWN_FILES[what]}), so "
                              "--overwrite does not apply: choose a new --output")


def _recorded_base(adapter: str) -> str | None:
    from roberta_lora.model.config import read_adapter_config

    return read_adapter_config(adapter)[0].base_model


def run_merge(args: argparse.Namespace) -> int:
    from roberta_lora.adapters.merge import export_merged
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    args.adapter = str(resolve_adapter(args.adapter))  # a folder, or a hub repo id (cached offline)
    base = args.model or _recorded_base(args.adapter)
    check_output(args.output, [args.adapter, base], args.overwrite, "merged checkpoint")
    model = LoraWrapperRoberta.from_adapter(args.adapter, model_id=args.model,
                                            allow_base_mismatch=args.allow_base_mismatch)
    summary = export_merged(model, args.output, tokenizer_source=args.model or model.adapter_config.base_model,
                            overwrite=args.overwrite)
    summary["max_abs_logit_difference"] = difference = merge_difference(model, args.output)
    if difference > 1e-4:
        logger.warning("the merged checkpoint's logits differ from the adapter's by %.2e (expected < 1e-5)", difference)
    print_json(summary)
    return 0


def merge_difference(model: Any, directory: str) -> float:
    """Largest |logit| difference between the adapter model and the merged checkpoint on a probe batch."""
    import torch

    from roberta_lora.adapters.merge import load_merged

    merged = load_merged(directory).to(next(model.parameters()).device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 16), generator=generator).to(next(model.parameters()).device)
    with torch.no_grad():
        ours, theirs = model.eval()(ids), merged(input_ids=ids)
    keys = ("logits",) if model.task_type == "glue" else ("start_logits", "end_logits")
    return max(float((ours[k] - theirs[k]).abs().max()) for k in keys)


def run_export_peft(args: argparse.Namespace) -> int:
    from roberta_lora.adapters.peft import export_peft

    args.adapter = str(resolve_adapter(args.adapter))
    check_output(args.output, [args.adapter, args.model or _recorded_base(args.adapter)], args.overwrite, "PEFT adapter")
    print_json(export_peft(args.adapter, args.output, base_model=args.model, overwrite=args.overwrite))
    return 0


def run_import_peft(args: argparse.Namespace) -> int:
    from roberta_lora.adapters.peft import import_peft

    check_output(args.output, [args.peft, args.model], args.overwrite, "converted adapter")
    spec = load_task(args.task) if args.task else None
    task_type = args.task_type or (None if spec is None else "glue" if spec.kind != "squad"
                                   else f"squad_v{spec.squad_version}")
    model = import_peft(args.peft, model_id=args.model, task=spec.name if spec else None, task_type=task_type,
                        label_names=spec.label_names if spec else (),
                        num_labels=spec.num_labels if spec and spec.kind != "squad" else None)
    model.save_adapter(args.output)
    config = model.adapter_config
    print_json({"output": args.output, "task_type": config.task_type, "num_classes": config.num_classes,
                "lora_rank": config.lora_rank, "lora_alpha": config.lora_alpha, "targets": config.targets,
                "train_biases": config.train_biases, "train_layer_norms": config.train_layer_norms})
    return 0

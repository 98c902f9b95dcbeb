"""PEFT interop: our adapters as PEFT LoRA adapters for transformers' RoBERTa classes, and back.

Our tensor names already are PEFT's, minus PEFT's "base_model.model." prefix: LoRA factors
(`...query.lora_A.weight`), biases (`...query.base_layer.bias` under a LoRA layer), LayerNorms,
and the heads `classifier.*` / `qa_outputs.*` of `RobertaForSequenceClassification` /
`RobertaForQuestionAnswering`. So an export is a rename plus a PEFT `LoraConfig` that makes
PEFT load each tensor where ours lives:

| ours | PEFT |
|---|---|
| targets, rank, alpha, dropout | `target_modules` (an exact regex), `r`, `lora_alpha`, `lora_dropout` |
| train_biases | `bias="all"` (every bias in the file is loaded into the base) |
| train_layer_norms / train_embeddings | `modules_to_save` += "LayerNorm" / the three embedding tables |
| head "roberta" (GLUE) / span head (SQuAD) | task `SEQ_CLS` + "classifier" / `QUESTION_ANS` + "qa_outputs" |

The light head (LayerNorm -> dropout -> Linear on <s>) has no transformers counterpart, so such
adapters are refused; `roberta-lora merge` exports them with the toolkit's own loader.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.fileio import atomic_write_bytes, atomic_write_text
from roberta_lora.lora.targets import TARGET_PATHS
from roberta_lora.model.adapter_files import read_adapter_tensors
from roberta_lora.model.config import MAX_CONFIG_BYTES, AdapterConfig, head_attribute, read_adapter_config
from roberta_lora.model.tensors import is_lora_factor
from roberta_lora.model.wrapper import LoraWrapperRoberta

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
EMBEDDING_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")
_LORA_KEY = re.compile(r"^roberta\.encoder\.layer\.(\d+)\.(.+)\.lora_([AB])\.weight$")
_TARGET_OF_PATH = {path: name for name, path in TARGET_PATHS.items()}


def transformers_class_name(config: AdapterConfig) -> str:
    """The transformers class PEFT loads the exported adapter on; AdapterError when there is none."""
    if config.method != "lora":
        raise AdapterError(f"a method={config.method!r} adapter has no LoRA layers; only LoRA adapters export to PEFT")
    if config.task_type != "glue":
        return "RobertaForQuestionAnswering"
    if config.head == "roberta":
        return "RobertaForSequenceClassification"
    raise AdapterError(
        "this adapter uses the light head (LayerNorm -> dropout -> Linear on <s>), which transformers' "
        "RobertaForSequenceClassification (dense -> tanh -> out_proj) cannot represent, so PEFT could not "
        "reproduce its logits; train with --head roberta to export to PEFT, or use `roberta-lora merge` "
        "for a standalone checkpoint"
    )


def to_peft(config: AdapterConfig, tensors: dict[str, torch.Tensor], base_model: str | None) -> tuple[dict, dict]:
    """(PEFT adapter_config.json contents, PEFT tensors) for one of our adapters."""
    cls = transformers_class_name(config)
    inner = "|".join(re.escape(TARGET_PATHS[t]) for t in config.targets)
    modules_to_save = [head_attribute(config.task_type)]
    if config.train_layer_norms:
        modules_to_save.append("LayerNorm")
    if config.train_embeddings:
        modules_to_save.extend(EMBEDDING_TABLES)
    alpha = config.lora_alpha
    peft_config = {
        "peft_type": "LORA",
        "task_type": "QUESTION_ANS" if cls == "RobertaForQuestionAnswering" else "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": config.lora_rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": config.lora_dropout,
        # A regex is matched in full by PEFT, so "output.dense" cannot also catch "attention.output.dense".
        "target_modules": rf"roberta\.encoder\.layer\.\d+\.(?:{inner})",
        "bias": "all" if config.train_biases else "none",
        "modules_to_save": modules_to_save,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    return peft_config, {PREFIX + name: t for name, t in tensors.items()}


def export_peft(adapter_dir: str | Path, output: str | Path, base_model: str | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Write `output`/adapter_config.json + adapter_model.safetensors for `peft.PeftModel.from_pretrained`."""
    adapter_dir, output = Path(adapter_dir), Path(output)
    config, digest = read_adapter_config(adapter_dir)
    if output.resolve() == adapter_dir.resolve():
        raise ConfigError(f"--output {output} is the adapter folder itself; PEFT's adapter_config.json would replace ours")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ConfigError(f"{output} exists and is not empty; choose a new --output or pass --overwrite")
    tensors = read_adapter_tensors(adapter_dir, digest)
    base = base_model or config.base_model
    peft_config, peft_tensors = to_peft(config, tensors, base)
    payload = save_safetensors_bytes({n: t.contiguous() for n, t in peft_tensors.items()}, metadata={"format": "pt"})
    atomic_write_bytes(output / PEFT_WEIGHTS_NAME, payload)
    atomic_write_text(output / PEFT_CONFIG_NAME, json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    cls = transformers_class_name(config)
    labels = f", num_labels={config.num_classes}" if cls == "RobertaForSequenceClassification" else ""
    return {
        "output": str(output), "transformers_class": cls, "tensors": len(peft_tensors),
        "load_with": f"PeftModel.from_pretrained({cls}.from_pretrained({base!r}{labels}), {str(output)!r})",
    }


# ----------------------------------------------------------------------------- import
def read_peft_adapter(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """PEFT's adapter_config.json and adapter_model.safetensors (pickled .bin files are refused)."""
    directory = Path(directory)
    config_path, weights_path = directory / PEFT_CONFIG_NAME, directory / PEFT_WEIGHTS_NAME
    if not config_path.is_file():
        raise AdapterError(f"{config_path} is missing; pass a PEFT adapter folder (adapter_config.json + {PEFT_WEIGHTS_NAME})")
    if not weights_path.is_file():
        pickled = (directory / "adapter_model.bin").is_file()
        raise AdapterError(f"{weights_path} is missing" + (
            "; adapter_model.bin is a pickle, which roberta-lora never loads: re-save the adapter with "
            "safe_serialization=True (PEFT's default)" if pickled else ""))
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{config_path} is {config_path.stat().st_size} bytes; a PEFT config is a few kB")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        tensors = load_safetensors_bytes(weights_path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, SafetensorError, ValueError, RuntimeError) as error:
        raise AdapterError(f"{directory} is not a readable PEFT adapter ({error})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: expected a JSON object")
    return config, tensors


def import_peft(peft_dir: str | Path, model_id: Any = None, task: str | None = None,
                task_type: str | None = None, label_names: Sequence[str] = (),
                num_labels: int | None = None) -> LoraWrapperRoberta:
    """Build one of our models from a PEFT LoRA adapter trained on RobertaForSequenceClassification
    or RobertaForQuestionAnswering. Tensors the PEFT file does not hold (e.g. biases with
    bias="none") keep the base's values, exactly what PEFT uses.

    Args:
        peft_dir: the PEFT adapter folder.
        model_id: the base (default: the adapter's base_model_name_or_path).
        task: the task name to record (e.g. "mnli").
        task_type: "glue", "squad_v1" or "squad_v2" (default: from the PEFT task type; SQuAD v1).
        label_names: class names in index order (their number must match the head's classes).
        num_labels: the task's number of outputs (1 = regression), checked against the head.
    """
    peft_config, raw = read_peft_adapter(peft_dir)
    tensors, ignored = {}, []
    for key, tensor in raw.items():
        name = key.removeprefix(PREFIX)
        # bias="all" also saves the frozen originals and duplicates of modules_to_save copies; PEFT ignores them.
        if ".original_module." in name or ".modules_to_save." in name:
            ignored.append(name)
        else:
            tensors[name] = tensor
    task_type = _resolve_task_type(peft_config, task_type)
    targets, rank = _lora_layout(tensors, peft_config)
    alpha = float(peft_config.get("lora_alpha", rank))
    if peft_config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r); ours by alpha / r
    head = head_attribute(task_type)
    if task_type == "glue" and "classifier.out_proj.weight" not in tensors:
        raise AdapterError(f"{peft_dir} holds no classifier weights (classifier.dense / classifier.out_proj); "
                           "train it with the head in modules_to_save (PEFT's SEQ_CLS task type does this)")
    if task_type != "glue" and "qa_outputs.weight" not in tensors:
        raise AdapterError(f"{peft_dir} holds no qa_outputs weights; train it with task_type QUESTION_ANS")
    num_classes = tensors["classifier.out_proj.weight"].size(0) if task_type == "glue" else 2
    expected = num_labels if num_labels is not None else (len(label_names) or None)
    if task_type == "glue" and expected is not None and expected != num_classes:
        raise ConfigError(f"{peft_dir} has a head with {num_classes} outputs but the task {task or ''} has {expected}; "
                          "pass the task it was trained on (--task)")
    rest = [n for n in tensors if not _LORA_KEY.match(n) and not n.startswith(f"{head}.")]
    base = model_id or peft_config.get("base_model_name_or_path")
    if base is None:
        raise ConfigError(f"{peft_dir}/adapter_config.json names no base model; pass one (CLI: --model)")
    model = LoraWrapperRoberta(
        task_type=task_type, num_classes=num_classes, model_id=base,
        lora_rank=rank, lora_alpha=alpha, lora_dropout=float(peft_config.get("lora_dropout", 0.0)), targets=targets,
        train_biases=any(n.endswith(".bias") and "LayerNorm" not in n for n in rest),
        train_layer_norms=any(".LayerNorm." in n for n in rest),
        train_embeddings=any(n.split(".")[-2] in EMBEDDING_TABLES for n in rest if n.count(".") >= 2),
        head="roberta", head_dropout=0.1, label_names=list(label_names) if task_type == "glue" else [], task=task,
    )
    _copy_into(model, tensors, peft_dir)
    return model.eval()


def _resolve_task_type(peft_config: dict, task_type: str | None) -> str:
    peft_task = peft_config.get("task_type")
    if peft_config.get("peft_type") != "LORA":
        raise AdapterError(f"peft_type {peft_config.get('peft_type')!r} is not supported; only LoRA adapters import")
    unsupported = [k for k in ("use_dora", "lora_bias", "rank_pattern", "alpha_pattern", "layers_to_transform",
                               "layer_replication", "trainable_token_indices") if peft_config.get(k)]
    if unsupported:
        raise AdapterError(f"the PEFT adapter uses {unsupported}, which our format cannot represent exactly")
    expected = {"SEQ_CLS": "glue", "QUESTION_ANS": "squad"}.get(peft_task)
    if expected is None:
        raise AdapterError(f"PEFT task_type {peft_task!r} is not supported; expected SEQ_CLS "
                           "(RobertaForSequenceClassification) or QUESTION_ANS (RobertaForQuestionAnswering)")
    if task_type is None:
        task_type = "glue" if expected == "glue" else "squad_v1"
    if not task_type.startswith(expected):
        raise ConfigError(f"task type {task_type!r} (from --task / --task-type) does not fit the PEFT adapter, which was "
                          f"trained with task_type {peft_task!r}; pass the task it was trained on")
    return task_type


def _lora_layout(tensors: dict[str, torch.Tensor], peft_config: dict) -> tuple[list[str], int]:
    """(our targets, rank) from the LoRA keys; every layer must carry the same targets with one rank."""
    per_layer: dict[int, set[str]] = {}
    ranks = set()
    unknown = []
    for name, tensor in tensors.items():
        match = _LORA_KEY.match(name)
        if match is None:
            if ".lora_" in name:
                unknown.append(name)
            continue
        layer, path, which = int(match.group(1)), match.group(2), match.group(3)
        if path not in _TARGET_OF_PATH:
            unknown.append(name)
            continue
        per_layer.setdefault(layer, set()).add(_TARGET_OF_PATH[path])
        ranks.add(tensor.size(0) if which == "A" else tensor.size(1))
    if unknown:
        raise AdapterError(f"LoRA tensors outside the encoder's linear layers cannot be imported: {unknown[:3]}")
    if not per_layer:
        raise AdapterError("the PEFT adapter holds no LoRA tensors for roberta.encoder.layer.<i>")
    layouts = {frozenset(t) for t in per_layer.values()}
    if len(layouts) > 1 or sorted(per_layer) != list(range(len(per_layer))):
        raise AdapterError("the PEFT adapter adapts different modules in different layers "
                           f"({dict(sorted(per_layer.items()))}); our adapters use the same targets in every layer")
    if len(ranks) > 1:
        raise AdapterError(f"the PEFT adapter mixes ranks {sorted(ranks)}; our adapters use one rank")
    if peft_config.get("r") not in (None, *ranks):
        raise AdapterError(f"adapter_config.json says r={peft_config.get('r')} but the tensors have rank {ranks.pop()}")
    targets = [t for t in TARGET_PATHS if t in next(iter(layouts))]
    return targets, ranks.pop()


@torch.no_grad()
def _copy_into(model: LoraWrapperRoberta, tensors: dict[str, torch.Tensor], source: Any) -> None:
    ours = model.adapter_state_dict()
    missing = [n for n in ours if is_lora_factor(n) and n not in tensors]
    if missing:
        raise AdapterError(f"{source}: the PEFT adapter lacks LoRA tensors, e.g. {missing[:2]} "
                           f"(the base has {model.config.num_hidden_layers} layers; is it the right base?)")
    problems = []
    for name, tensor in tensors.items():
        # PEFT names a LoRA layer's bias "<path>.base_layer.bias" like us; accept "<path>.bias" as well.
        target = name if name in ours or not name.endswith(".bias") else name.removesuffix(".bias") + ".base_layer.bias"
        if target not in ours:
            problems.append(f"{name} (no such tensor in our model)")
        elif tuple(ours[target].shape) != tuple(tensor.shape):
            problems.append(f"{name} has shape {tuple(tensor.shape)}, the model expects {tuple(ours[target].shape)}")
        else:
            ours[target].copy_(tensor.to(ours[target].dtype))
    if problems:
        raise AdapterError(f"{source} does not fit this base model: " + "; ".join(problems[:6]))

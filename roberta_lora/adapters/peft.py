"""PEFT interop: our adapters as PEFT LoRA adapters for transformers' classes of their family, and back.

Our tensor names are PEFT's, minus PEFT's "base_model.model." prefix, once the encoder's attribute
"roberta" is renamed to the family's (`bert`, `distilbert`; XLM-R and CamemBERT also use `roberta`):
LoRA factors (`...query.lora_A.weight`), biases (`...query.base_layer.bias` under a LoRA layer),
LayerNorms, and the heads of the family's `...ForSequenceClassification` / `...ForQuestionAnswering`
(`model.families`; for BERT the "roberta" head's dense layer is `bert.pooler.dense`). So an export is
a rename plus a PEFT `LoraConfig` that makes PEFT load each tensor where ours lives:

| ours | PEFT |
|---|---|
| targets, rank, alpha, dropout | `target_modules` (an exact regex), `r`, `lora_alpha`, `lora_dropout` |
| train_biases | `bias="all"` (every bias in the file is loaded into the base) |
| train_layer_norms / train_embeddings | `modules_to_save` += the family's LayerNorm names / the embedding tables |
| head "roberta" (GLUE) / span head (SQuAD) | task `SEQ_CLS` + "classifier" (BERT: + "pooler") / `QUESTION_ANS` + "qa_outputs" |

The light head (LayerNorm -> dropout -> Linear on the first token) has no transformers counterpart,
and DistilBERT's sequence classifier is not the "roberta" head, so such adapters are refused;
`roberta-lora merge` exports them with the toolkit's own loader.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from transformers import PretrainedConfig

from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.fileio import atomic_write_bytes, atomic_write_text
from roberta_lora.lora.targets import TARGET_PATHS, layout
from roberta_lora.lora.variants import EXTRA_TENSOR_NAMES, init_from_peft, peft_init_value
from roberta_lora.model.adapter_files import read_adapter_tensors
from roberta_lora.model.base import BaseSpec, base_model_type
from roberta_lora.model.config import MAX_CONFIG_BYTES, AdapterConfig, head_attribute, read_adapter_config
from roberta_lora.model.families import Family, family_of
from roberta_lora.model.standalone import classifier_names
from roberta_lora.model.tensors import is_lora_factor
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.sources import hub_model_id, resolve_model

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
EMBEDDING_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")
EXTRA_SUFFIXES = tuple(f".{name}" for name in EXTRA_TENSOR_NAMES)  # a variant's own tensors (DoRA's magnitude)


def transformers_class_name(config: AdapterConfig) -> str:
    """The transformers class PEFT loads the exported adapter on; AdapterError when there is none."""
    if config.method != "lora":
        raise AdapterError(f"a method={config.method!r} adapter has no LoRA layers; only LoRA adapters export to PEFT")
    family = family_of(config.model_type)
    if config.task_type != "glue":
        return family.question_answering.__name__
    if config.head == "roberta" and family.sequence_classification is not None:
        return family.sequence_classification.__name__
    if config.head == "roberta":
        raise AdapterError(
            f"this {config.model_type} adapter uses the roberta head (dense -> tanh -> out_proj), which no transformers "
            f"class of its family computes ({config.model_type}'s sequence classifier is pre_classifier -> ReLU -> "
            "classifier), so PEFT could not reproduce its logits; use `roberta-lora merge` for a standalone checkpoint"
        )
    raise AdapterError(
        "this adapter uses the light head (LayerNorm -> dropout -> Linear on the first token), which transformers' "
        "...ForSequenceClassification (dense -> tanh -> out_proj) cannot represent, so PEFT could not "
        "reproduce its logits; train with --head roberta to export to PEFT, or use `roberta-lora merge` "
        "for a standalone checkpoint"
    )


def _head_modules(family: Family, task_type: str) -> list[str]:
    """The head's modules in the family's transformers class, as PEFT's modules_to_save names them."""
    if task_type != "glue":
        return [head_attribute(task_type)]
    paths = (path.removeprefix(f"{family.prefix}.") for path in family.classifier_paths.values())
    return list(dict.fromkeys(path.split(".")[0] for path in paths))  # ["classifier"]; BERT ["classifier", "pooler"]


def to_peft(config: AdapterConfig, tensors: dict[str, torch.Tensor], base_model: str | None) -> tuple[dict, dict]:
    """(PEFT adapter_config.json contents, PEFT tensors) for one of our adapters."""
    transformers_class_name(config)  # refuses what PEFT could not reproduce
    family, paths = family_of(config.model_type), layout(config.model_type)
    inner = "|".join(re.escape(paths.paths[t]) for t in config.targets)
    layers = r"\d+" if config.layers_to_transform is None else "(?:" + "|".join(
        str(i) for i in sorted(config.layers_to_transform)) + ")"
    modules_to_save = _head_modules(family, config.task_type)
    if config.train_layer_norms:
        modules_to_save.extend(family.layer_norms)
    if config.train_embeddings:
        held = {name.split(".")[-2] for name in tensors if name.count(".") >= 2}
        modules_to_save.extend(table for table in EMBEDDING_TABLES if table in held)
    alpha = config.lora_alpha
    peft_config = {
        "peft_type": "LORA",
        "task_type": "QUESTION_ANS" if config.task_type != "glue" else "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": config.lora_rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": config.lora_dropout,
        # A regex is matched in full by PEFT, so "output.dense" cannot also catch "attention.output.dense".
        # layers_to_transform is written into the regex: PEFT applies it only to lists of module names.
        "target_modules": rf"{family.prefix}\.{re.escape(paths.layers)}\.{layers}\.(?:{inner})",
        "bias": "all" if config.train_biases else "none",
        "modules_to_save": modules_to_save,
        "fan_in_fan_out": False,
        # PiSSA / OLoRA adapters are saved converted (a plain rank-2r update), as PEFT writes them: init True
        "init_lora_weights": peft_init_value(config.init_lora_weights),
        "inference_mode": True,
        "use_rslora": bool(config.use_rslora),
        "use_dora": bool(config.use_dora),
    }
    return peft_config, {PREFIX + name: t for name, t in _peft_names(config, family, tensors).items()}


def _peft_names(config: AdapterConfig, family: Family, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensor names as in the family's transformers class (without PEFT's prefix)."""
    head = head_attribute(config.task_type) + "."
    renamed = {f"{family.prefix}.{n.removeprefix('roberta.')}": t for n, t in tensors.items() if n.startswith("roberta.")}
    head_state = {n.removeprefix(head): t for n, t in tensors.items() if n.startswith(head)}
    if config.task_type == "glue":
        renamed.update(classifier_names(family, head_state))
    else:
        renamed.update({head + n: t for n, t in head_state.items()})
    return renamed


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
    base = peft_base_name(base_model or config.base_model)
    peft_config, peft_tensors = to_peft(config, tensors, base)
    payload = save_safetensors_bytes({n: t.contiguous() for n, t in peft_tensors.items()}, metadata={"format": "pt"})
    atomic_write_bytes(output / PEFT_WEIGHTS_NAME, payload)
    atomic_write_text(output / PEFT_CONFIG_NAME, json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    cls = transformers_class_name(config)
    labels = f", num_labels={config.num_classes}" if config.task_type == "glue" else ""
    return {
        "output": str(output), "transformers_class": cls, "tensors": len(peft_tensors),
        "load_with": f"PeftModel.from_pretrained({cls}.from_pretrained({base!r}{labels}), {str(output)!r})",
    }


def peft_base_name(base: str | None) -> str | None:
    """What PEFT's `base_model_name_or_path` should say for a base, so that `AutoPeftModel...` and the
    printed hint load it: a packaged model's Hub id (all-MiniLM-L6-v2 -> sentence-transformers/...), the
    repo id of a Hub cache snapshot, the absolute path of another local folder, a Hub id as it is."""
    if base is None:
        return None
    hub_id = hub_model_id(str(base))
    if hub_id is not None:
        return hub_id
    path = Path(os.path.expanduser(str(base)))
    return str(path.resolve()) if path.is_dir() else str(base)


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
    """Build one of our models from a PEFT LoRA adapter trained on a `...ForSequenceClassification` (RoBERTa,
    XLM-R, CamemBERT, BERT) or `...ForQuestionAnswering` (every family) of its base's family. Tensors the
    PEFT file does not hold (e.g. biases with bias="none", BERT's pooler when it was not in modules_to_save)
    keep the base's values, exactly what PEFT uses.

    Args:
        peft_dir: the PEFT adapter folder.
        model_id: the base (default: the adapter's base_model_name_or_path); its family names the tensors.
        task: the task name to record (e.g. "mnli").
        task_type: "glue", "squad_v1" or "squad_v2" (default: from the PEFT task type; SQuAD v1).
        label_names: class names in index order (their number must match the head's classes).
        num_labels: the task's number of outputs (1 = regression), checked against the head.
    """
    peft_config, raw = read_peft_adapter(peft_dir)
    task_type = _resolve_task_type(peft_config, task_type)
    base = model_id or peft_config.get("base_model_name_or_path")
    if base is None:
        raise ConfigError(f"{peft_dir}/adapter_config.json names no base model; pass one (CLI: --model)")
    model_type = base_model_type(base)
    family = family_of(model_type)
    if task_type == "glue" and family.sequence_classification is None:
        raise AdapterError(f"{peft_dir} is a sequence-classification adapter on a {model_type} base, whose transformers "
                           "head (pre_classifier -> ReLU -> classifier) has no counterpart here; only its "
                           "question-answering adapters import")
    tensors = _our_names(raw, family, task_type)
    if task_type == "glue" and "classifier.dense.weight" not in tensors and "classifier.out_proj.weight" in tensors:
        # PEFT trains the pooler's bias under bias="all" without saving its weight: keep what it trained
        for name, tensor in _base_pooler(base, family, peft_dir).items():
            tensors.setdefault(name, tensor)
    targets, rank, layers = _lora_layout(tensors, peft_config, model_type)
    if layers == list(range(_layer_count(base))):
        layers = None  # every layer
    alpha = float(peft_config.get("lora_alpha", rank))
    head = head_attribute(task_type)
    if task_type == "glue" and not {"classifier.dense.weight", "classifier.out_proj.weight"} <= tensors.keys():
        raise AdapterError(f"{peft_dir} holds no classifier weights ({', '.join(family.classifier_paths.values())}); "
                           "train it with the head in modules_to_save (PEFT's SEQ_CLS task type does this)")
    if task_type != "glue" and "qa_outputs.weight" not in tensors:
        raise AdapterError(f"{peft_dir} holds no qa_outputs weights; train it with task_type QUESTION_ANS")
    num_classes = tensors["classifier.out_proj.weight"].size(0) if task_type == "glue" else 2
    expected = num_labels if num_labels is not None else (len(label_names) or None)
    if task_type == "glue" and expected is not None and expected != num_classes:
        raise ConfigError(f"{peft_dir} has a head with {num_classes} outputs but the task {task or ''} has {expected}; "
                          "pass the task it was trained on (--task)")
    rest = [n for n in tensors if not is_lora_factor(n) and not n.startswith(f"{head}.")]
    module_of = {n: n.split(".")[-2] for n in rest if n.count(".") >= 2}  # "roberta....LayerNorm.bias" -> "LayerNorm"
    model = LoraWrapperRoberta(
        task_type=task_type, num_classes=num_classes, model_id=base,
        lora_rank=rank, lora_alpha=alpha, lora_dropout=float(peft_config.get("lora_dropout", 0.0)), targets=targets,
        train_biases=any(n.endswith(".bias") and module_of.get(n) not in family.layer_norms for n in rest),
        train_layer_norms=any(module_of.get(n) in family.layer_norms for n in rest),
        train_embeddings=any(module_of.get(n) in EMBEDDING_TABLES for n in rest),
        head="roberta", head_dropout=0.1, label_names=list(label_names) if task_type == "glue" else [], task=task,
        use_rslora=bool(peft_config.get("use_rslora")), use_dora=bool(peft_config.get("use_dora")),
        # PiSSA / OLoRA: the model recomputes PEFT's start from the base and subtracts it, as PEFT's modified base does
        init_lora_weights=init_from_peft(peft_config.get("init_lora_weights", True)) or "kaiming",
        layers_to_transform=layers,
    )
    _copy_into(model, tensors, peft_dir)
    return model.eval()


def _our_names(raw: dict[str, torch.Tensor], family: Family, task_type: str) -> dict[str, torch.Tensor]:
    """PEFT's tensors under our names: the family's encoder attribute becomes "roberta", the head's tensors
    become "classifier.dense.*" / "classifier.out_proj.*" or "qa_outputs.*"."""
    heads = {path + ".": f"classifier.{module}." for module, path in family.classifier_paths.items()}
    if task_type != "glue":
        heads = {"qa_outputs.": "qa_outputs."}
    tensors = {}
    for key, tensor in raw.items():
        name = key.removeprefix(PREFIX)
        # bias="all" also saves the frozen originals and duplicates of modules_to_save copies; PEFT ignores them.
        if ".original_module." in name or ".modules_to_save." in name:
            continue
        head = next((ours + name.removeprefix(theirs) for theirs, ours in heads.items() if name.startswith(theirs)), None)
        if head is not None:
            tensors[head] = tensor
        elif name.startswith(f"{family.prefix}."):
            tensors["roberta." + name.removeprefix(f"{family.prefix}.")] = tensor
        else:
            tensors[name] = tensor  # reported by _copy_into as a tensor our model does not have
    return tensors


def _base_pooler(base: BaseSpec, family: Family, source: Any) -> dict[str, torch.Tensor]:
    """The base checkpoint's pooler as the "roberta" head's dense layer: BERT's sequence classifier reads it,
    and PEFT leaves it out of the adapter unless it was in modules_to_save."""
    path = family.classifier_paths.get("dense", "").removeprefix(f"{family.prefix}.")
    if path != "pooler.dense":
        return {}  # the dense layer is part of the classifier: the missing-weights check reports it
    missing: list[str] = []
    if isinstance(base, (str, Path)):
        encoder, info = family.encoder.from_pretrained(str(base), output_loading_info=True)  # with its pooler, this once
        missing = [name for name in info.get("missing_keys", []) if name.startswith("pooler.")]
    else:
        encoder = base
    pooler = getattr(encoder, "pooler", None)
    if pooler is None or missing:
        raise AdapterError(f"{source} uses the base's pooler ({family.prefix}.pooler.dense), which the base {base!s:.200} "
                           "does not hold; pass the checkpoint the adapter was trained on (--model), or export the "
                           "adapter from PEFT with modules_to_save=['classifier', 'pooler']")
    return {f"classifier.dense.{n}": t.detach().clone() for n, t in pooler.dense.state_dict().items()}


def _resolve_task_type(peft_config: dict, task_type: str | None) -> str:
    peft_task = peft_config.get("task_type")
    if peft_config.get("peft_type") != "LORA":
        raise AdapterError(f"peft_type {peft_config.get('peft_type')!r} is not supported; only LoRA adapters import")
    unsupported = [k for k in ("lora_bias", "rank_pattern", "alpha_pattern", "layer_replication",
                               "trainable_token_indices") if peft_config.get(k)]
    if unsupported:
        raise AdapterError(f"the PEFT adapter uses {unsupported}, which our format cannot represent exactly")
    init = peft_config.get("init_lora_weights", True)
    if init_from_peft(init) is None:
        raise AdapterError(
            f"the PEFT adapter was initialised with init_lora_weights={init!r}, which changes the base weights in a way "
            "that cannot be recomputed here, so it only works on PEFT's modified base; save it with PEFT's "
            "path_initial_model_for_weight_conversion (a plain LoRA adapter for the unmodified base) and import that")
    expected = {"SEQ_CLS": "glue", "QUESTION_ANS": "squad"}.get(peft_task)
    if expected is None:
        raise AdapterError(f"PEFT task_type {peft_task!r} is not supported; expected SEQ_CLS "
                           "(e.g. RobertaForSequenceClassification) or QUESTION_ANS (e.g. RobertaForQuestionAnswering)")
    if task_type is None:
        task_type = "glue" if expected == "glue" else "squad_v1"
    if not task_type.startswith(expected):
        raise ConfigError(f"task type {task_type!r} (from --task / --task-type) does not fit the PEFT adapter, which was "
                          f"trained with task_type {peft_task!r}; pass the task it was trained on")
    return task_type


def _lora_layout(tensors: dict[str, torch.Tensor], peft_config: dict, model_type: str,
                 ) -> tuple[list[str], int, list[int]]:
    """(our targets, rank, the layers that carry LoRA) from the LoRA keys (our names, see `_our_names`); every
    adapted layer must carry the same targets with one rank."""
    family = layout(model_type)
    lora_key = re.compile(rf"^roberta\.{re.escape(family.layers)}\.(\d+)\.(.+)\.lora_([AB])\.weight$")
    target_of_path = {path: name for name, path in family.paths.items()}
    per_layer: dict[int, set[str]] = {}
    ranks = set()
    unknown = []
    for name, tensor in tensors.items():
        match = lora_key.match(name)
        if match is None:
            if ".lora_" in name and not name.endswith(EXTRA_SUFFIXES):
                unknown.append(name)
            continue
        layer, path, which = int(match.group(1)), match.group(2), match.group(3)
        if path not in target_of_path:
            unknown.append(name)
            continue
        per_layer.setdefault(layer, set()).add(target_of_path[path])
        ranks.add(tensor.size(0) if which == "A" else tensor.size(1))
    if unknown:
        raise AdapterError(f"LoRA tensors outside the encoder's linear layers cannot be imported: {unknown[:3]}")
    if not per_layer:
        raise AdapterError(f"the PEFT adapter holds no LoRA tensors for the {model_type} base's {family.layers}.<i>")
    layouts = {frozenset(t) for t in per_layer.values()}
    if len(layouts) > 1:
        raise AdapterError("the PEFT adapter adapts different modules in different layers "
                           f"({dict(sorted(per_layer.items()))}); our adapters use the same targets in every "
                           "adapted layer")
    if len(ranks) > 1:
        raise AdapterError(f"the PEFT adapter mixes ranks {sorted(ranks)}; our adapters use one rank")
    if peft_config.get("r") not in (None, *ranks):
        raise AdapterError(f"adapter_config.json says r={peft_config.get('r')} but the tensors have rank {ranks.pop()}")
    targets = [t for t in TARGET_PATHS if t in next(iter(layouts))]
    return targets, ranks.pop(), sorted(per_layer)


def _layer_count(base: BaseSpec) -> int:
    """How many layers the base encoder has (read from its config, no weights)."""
    if isinstance(base, (str, Path)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_model(str(base)))
    else:
        config = base if isinstance(base, PretrainedConfig) else base.config
    return int(config.num_hidden_layers)


@torch.no_grad()
def _copy_into(model: LoraWrapperRoberta, tensors: dict[str, torch.Tensor], source: Any) -> None:
    ours = model.adapter_state_dict()
    missing = [n for n in ours if is_lora_factor(n) and n not in tensors]
    if missing and all(n.endswith(EXTRA_SUFFIXES) for n in missing):
        raise AdapterError(f"{source}: adapter_config.json asks for use_dora=True but the file lacks the DoRA "
                           f"magnitudes, e.g. {missing[:1]}; is the config from another adapter?")
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

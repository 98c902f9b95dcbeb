"""Merging LoRA: into the base weights (standalone checkpoints) and of several adapters into one.

Standalone models (`merge_and_unload`, `roberta-lora merge`): each adapted weight becomes
W + (alpha / r) * B @ A, computed by `LoraLinear.delta_weight` exactly as `merge()` does; the
adapter's biases, LayerNorms and head are copied as they are. What comes out:

| adapter | standalone model | directory written by `export_merged` |
|---|---|---|
| SQuAD v1/v2 | `RobertaForQuestionAnswering` | a transformers checkpoint + tokenizer |
| GLUE, "roberta" head | `RobertaForSequenceClassification` | a transformers checkpoint + tokenizer |
| GLUE, light head | `MergedLightClassifier` | an encoder checkpoint (`RobertaModel.from_pretrained` loads it) + `light_head.safetensors` |

Every directory also gets `roberta_lora_merge.json` (what was merged, from which adapter);
`load_merged(dir)` reads any of them back.

Combining adapters (`add_weighted_adapter`): see that function.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from roberta_lora import __version__
from roberta_lora.adapter_config import AdapterConfig
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.heads import LightClassificationHead
from roberta_lora.injection import TARGET_PATHS, lora_layers
from roberta_lora.multi_adapter import adapter_tensors, add_to_bank, base_name, is_lora_factor

if TYPE_CHECKING:
    from roberta_lora.model import LoraWrapperRoberta

logger = logging.getLogger(__name__)

MERGE_INFO_NAME = "roberta_lora_merge.json"
LIGHT_HEAD_NAME = "light_head.safetensors"
KINDS = ("question_answering", "sequence_classification", "light_head")
COMBINATIONS = ("linear", "cat", "svd")


# ----------------------------------------------------------------------------- standalone models
class MergedLightClassifier(nn.Module):
    """A plain RoBERTa encoder (LoRA merged in) with the toolkit's light head: the standalone form of
    a GLUE adapter with `head="light"`, which has no transformers counterpart."""

    def __init__(self, config: RobertaConfig, num_classes: int, head_dropout: float = 0.1,
                 label_names: Sequence[str] = ()) -> None:
        super().__init__()
        self.config = config
        self.label_names = list(label_names)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = LightClassificationHead(config.hidden_size, num_classes, head_dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = self.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return SequenceClassifierOutput(logits=self.classifier(hidden))  # (B, C)

    def save_pretrained(self, directory: str | Path) -> None:
        """The encoder as a transformers checkpoint, the head as light_head.safetensors."""
        self.roberta.save_pretrained(directory)
        state = {n: t.detach().to("cpu").contiguous() for n, t in self.classifier.state_dict().items()}
        save_file(state, Path(directory) / LIGHT_HEAD_NAME, metadata={"format": "pt", "producer": "roberta-lora"})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MergedLightClassifier:
        directory = Path(directory)
        info = read_merge_info(directory)
        head = load_file(directory / LIGHT_HEAD_NAME)
        encoder = RobertaModel.from_pretrained(directory, add_pooling_layer=False)
        model = cls(encoder.config, info["num_classes"], info.get("head_dropout", 0.1), info.get("label_names", []))
        model.roberta = encoder
        model.classifier.load_state_dict(head, strict=True)
        return model.eval()


def _require_full_precision(model: LoraWrapperRoberta, action: str) -> None:
    for name, parameter in model.roberta.named_parameters():
        if type(parameter) is not nn.Parameter or not parameter.is_floating_point():
            raise ConfigError(f"cannot {action} with a quantized base ({name} is a {type(parameter).__name__} of "
                              f"{parameter.dtype}); load the base in full precision (no --quantize) and the adapter on it")


@torch.no_grad()
def encoder_state_dict(model: LoraWrapperRoberta, plain_base: bool = False) -> dict[str, torch.Tensor]:
    """The encoder's tensors as a plain `RobertaModel` state dict (copies; `model` is left as it was).

    By default the active adapter is folded in: W + delta for every LoRA layer, the adapter's
    biases / LayerNorms / embeddings. `plain_base=True`: the base as loaded instead.
    """
    model._bank.require_enabled("export the model")
    _require_full_precision(model, "merge or unload")
    was_merged = model.merged
    model.unmerge_adapter()
    try:
        state = {}
        for key, tensor in model.roberta.state_dict().items():
            plain = base_name(f"roberta.{key}")
            if plain is not None:
                state[plain] = tensor.detach().clone()
        if plain_base:
            state.update({n: t.to(state[n].device, copy=True) for n, t in model._bank.pristine.items()})
        else:
            for path, layer in lora_layers(model.roberta).items():
                weight = state[f"{path}.weight"]
                state[f"{path}.weight"] = weight + layer.delta_weight().to(weight.dtype)  # as LoraLinear.merge
    finally:
        if was_merged:
            model.merge_adapter()
    return state


def plain_base_model(model: LoraWrapperRoberta) -> RobertaModel:
    """The base encoder as loaded, as a new `RobertaModel`."""
    return _assemble(RobertaModel(copy.deepcopy(model.config), add_pooling_layer=False),
                     encoder_state_dict(model, plain_base=True), model)


def standalone_model(model: LoraWrapperRoberta) -> nn.Module:
    """The active adapter folded into a copy of the base, with its head (see the module docstring)."""
    cfg = model.adapter_config
    encoder = {f"roberta.{n}": t for n, t in encoder_state_dict(model).items()}
    head = {f"{'classifier' if cfg.task_type == 'glue' else 'qa_outputs'}.{n}": t.detach().clone()
            for n, t in model.head_module.state_dict().items()}
    config = copy.deepcopy(model.config)
    kind = merged_kind(cfg)
    if kind == "question_answering":
        config.num_labels = 2
        config.architectures = ["RobertaForQuestionAnswering"]
        shell: nn.Module = RobertaForQuestionAnswering(config)
    elif kind == "sequence_classification":
        config.num_labels = cfg.num_classes
        config.id2label = {i: name for i, name in enumerate(cfg.label_names)} or config.id2label
        config.label2id = {name: i for i, name in config.id2label.items()}
        config.problem_type = "regression" if cfg.num_classes == 1 else "single_label_classification"
        config.classifier_dropout = cfg.head_dropout
        config.architectures = ["RobertaForSequenceClassification"]
        shell = RobertaForSequenceClassification(config)
    else:
        shell = MergedLightClassifier(config, cfg.num_classes, cfg.head_dropout, cfg.label_names)
    return _assemble(shell, {**encoder, **head}, model)


def merged_kind(config: AdapterConfig) -> str:
    if config.task_type != "glue":
        return "question_answering"
    return "sequence_classification" if config.head == "roberta" else "light_head"


def _assemble(shell: nn.Module, state: dict[str, torch.Tensor], model: LoraWrapperRoberta) -> Any:
    # assign=True keeps our tensors' dtype and device; strict=True catches any name we got wrong.
    shell.load_state_dict(state, strict=True, assign=True)
    device = next(model.roberta.parameters()).device
    return shell.to(device).train(model.training)


# ----------------------------------------------------------------------------- merged directories
def export_merged(model: LoraWrapperRoberta, output: str | Path, tokenizer_source: str | Path | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
    """Write the standalone form of the active adapter to `output`; returns a summary.

    Files are written to a temporary sibling folder and renamed into place (the whole folder at
    once when `output` does not exist yet; else file by file, config.json last), so an
    interrupted export never leaves a half-written checkpoint. `tokenizer_source` (default: the
    adapter's base) is copied too, since transformers' pipelines need a tokenizer next to the model.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ConfigError(f"{output} exists and is not empty; choose a new --output or pass --overwrite")
    cfg = model.adapter_config
    standalone = standalone_model(model)
    kind = merged_kind(cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        standalone.save_pretrained(tmp)
        tokenizer = _save_tokenizer(tokenizer_source or cfg.base_model, tmp)
        info = {"format": "roberta-lora-merged", "format_version": 1, "kind": kind, "task": cfg.task,
                "task_type": cfg.task_type, "num_classes": cfg.num_classes, "label_names": cfg.label_names,
                "head_dropout": cfg.head_dropout, "tokenizer": tokenizer, "adapter": asdict(cfg),
                "package_version": __version__}
        (tmp / MERGE_INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        files = sorted(p.name for p in tmp.iterdir())
        _publish(tmp, output, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"output": str(output), "kind": kind, "files": files, "tokenizer": tokenizer}


def _save_tokenizer(source: str | Path | None, directory: Path) -> str | None:
    if source is None:
        logger.warning("no tokenizer source known; the merged folder has no tokenizer (pass --model)")
        return None
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(directory)
    except (OSError, ValueError) as error:
        logger.warning("could not copy a tokenizer from %s (%s); the merged folder has none",
                       source, str(error).splitlines()[0])
        return None
    return str(source)


def _publish(tmp: Path, output: Path, files: list[str]) -> None:
    if not output.exists():
        os.replace(tmp, output)  # one atomic step
        return
    # Weights and tokenizer first, then the files that describe them.
    for name in sorted(files, key=lambda n: (n in ("config.json", MERGE_INFO_NAME), n)):
        os.replace(tmp / name, output / name)
    for stale in (LIGHT_HEAD_NAME,):  # left by an earlier export of another kind
        if stale not in files:
            (output / stale).unlink(missing_ok=True)


def read_merge_info(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MERGE_INFO_NAME
    if not path.is_file():
        raise AdapterError(f"{path} is missing; `roberta-lora merge` writes it next to the merged checkpoint")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(info, dict) or info.get("kind") not in KINDS:
        raise AdapterError(f"{path}: expected a JSON object with kind in {list(KINDS)}")
    return info


def load_merged(directory: str | Path) -> nn.Module:
    """Load what `export_merged` wrote: a transformers model, or a `MergedLightClassifier`."""
    kind = read_merge_info(directory)["kind"]
    if kind == "light_head":
        return MergedLightClassifier.from_pretrained(directory)
    cls = RobertaForQuestionAnswering if kind == "question_answering" else RobertaForSequenceClassification
    return cls.from_pretrained(str(directory)).eval()


# ----------------------------------------------------------------------------- combining adapters
def combine_lora_factors(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float], scalings: Sequence[float],
    combination_type: str, svd_rank: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine one layer's LoRA factors (A_i (r_i, in), B_i (out, r_i)) into (A, B) used with scaling 1.

    With D = sum_i w_i s_i B_i A_i (s_i = alpha_i / r_i, the weighted sum of the deltas):
    - "cat": B = [B_1 .. B_n], A = [w_1 s_1 A_1; ..; w_n s_n A_n]; B @ A = D exactly (rank sum r_i).
    - "linear": equal ranks; A = sum_i sqrt(w_i s_i) A_i, B = sum_i sqrt(w_i s_i) B_i (PEFT's "linear").
      B @ A = D plus the cross terms B_i A_j (i != j): cheap and same rank, but not the sum.
    - "svd": the best rank-k approximation of D (truncated SVD, k = svd_rank or the largest r_i);
      exact when k >= rank(D).
    """
    if combination_type == "cat":
        a = torch.cat([w * s * a for (a, _), w, s in zip(factors, weights, scalings, strict=True)], dim=0)
        b = torch.cat([b for _, b in factors], dim=1)
        return a, b
    if combination_type == "linear":
        roots = [math.sqrt(w * s) for w, s in zip(weights, scalings, strict=True)]
        a = sum(r * a for (a, _), r in zip(factors, roots, strict=True))
        b = sum(r * b for (_, b), r in zip(factors, roots, strict=True))
        return a, b  # type: ignore[return-value]
    dtype = factors[0][0].dtype
    delta = sum(w * s * (b.float() @ a.float()) for (a, b), w, s in zip(factors, weights, scalings, strict=True))  # (out, in)
    k = svd_rank or max(a.size(0) for a, _ in factors)
    u, sigma, vh = torch.linalg.svd(delta, full_matrices=False)  # type: ignore[arg-type]
    root = sigma[:k].sqrt()  # split the singular values evenly between the factors
    return (root[:, None] * vh[:k]).to(dtype), (u[:, :k] * root).to(dtype)


def add_weighted_adapter(
    model: LoraWrapperRoberta, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
    combination_type: str = "svd", svd_rank: int | None = None, average_non_lora: bool = False,
) -> AdapterConfig:
    """Add `adapter_name`, a weighted combination of LoRA adapters on the same targets (not activated).

    LoRA factors are combined layer by layer with `combine_lora_factors`; the new adapter has
    rank r' (r for "linear", the sum of ranks for "cat", `svd_rank` for "svd") and alpha = r'.

    Biases, LayerNorms, embeddings and the head are not low-rank, so they cannot be "added".
    By default the combination takes them from the first adapter and logs a warning saying so.
    With `average_non_lora=True` they become the weighted average sum_i w_i t_i / sum_i w_i,
    which needs every adapter to hold the same tensors with the same shapes (same task type,
    number of classes, head kind and train_* flags); otherwise a ConfigError says what differs.
    """
    bank = model._bank
    problems = []
    if combination_type not in COMBINATIONS:
        problems.append(f"combination_type={combination_type!r} (expected one of {list(COMBINATIONS)})")
    if not adapters or len(adapters) != len(weights):
        problems.append(f"{len(adapters)} adapters and {len(weights)} weights (expected the same, at least one)")
    problems += [f"unknown adapter {n!r} (loaded: {list(bank.configs)})" for n in adapters if n not in bank.configs]
    if adapter_name in bank.configs:
        problems.append(f"adapter_name {adapter_name!r} already exists")
    if problems:
        raise ConfigError("cannot combine adapters: " + "; ".join(problems))
    configs = [bank.configs[n] for n in adapters]
    _check_combinable(adapters, configs, weights, combination_type, svd_rank, model.config)

    tensors = [adapter_tensors(model, n) for n in adapters]
    scalings = [c.lora_alpha / c.lora_rank for c in configs]
    combined: dict[str, torch.Tensor] = {}
    for layer in range(model.config.num_hidden_layers):
        for target in configs[0].targets:
            path = f"roberta.encoder.layer.{layer}.{TARGET_PATHS[target]}"
            factors = [(t[f"{path}.lora_A.weight"], t[f"{path}.lora_B.weight"]) for t in tensors]
            a, b = combine_lora_factors(factors, weights, scalings, combination_type, svd_rank)
            combined[f"{path}.lora_A.weight"], combined[f"{path}.lora_B.weight"] = a.contiguous(), b.contiguous()
    rank = combined[f"{path}.lora_A.weight"].size(0)
    combined.update(_combine_rest(adapters, configs, tensors, weights, average_non_lora))
    config = replace(configs[0], lora_rank=rank, lora_alpha=float(rank), metrics={})
    add_to_bank(model, adapter_name, config, combined)
    return config


def _check_combinable(names: Sequence[str], configs: Sequence[AdapterConfig], weights: Sequence[float],
                      combination_type: str, svd_rank: int | None, encoder_config: RobertaConfig) -> None:
    problems = [f"{n!r} has method {c.method!r}" for n, c in zip(names, configs, strict=True) if c.method != "lora"]
    problems += [f"{n!r} adapts {c.targets}, {names[0]!r} {configs[0].targets}"
                 for n, c in zip(names, configs, strict=True) if c.targets != configs[0].targets]
    if combination_type == "linear":
        if len({c.lora_rank for c in configs}) > 1:
            problems.append(f"'linear' needs equal ranks, got {[c.lora_rank for c in configs]} (use 'cat' or 'svd')")
        problems += [f"'linear' takes square roots of weight * alpha / r, so weight {w} of {n!r} must be >= 0 "
                     "(use 'cat' or 'svd' for negative weights)" for n, w in zip(names, weights, strict=True) if w < 0]
    if combination_type == "svd" and svd_rank is not None:
        limit = min(encoder_config.hidden_size, encoder_config.intermediate_size)
        if not isinstance(svd_rank, int) or not 1 <= svd_rank <= limit:
            problems.append(f"svd_rank={svd_rank!r} (expected an integer in [1, {limit}])")
    if problems:
        raise ConfigError("cannot combine adapters: " + "; ".join(problems))


def _combine_rest(names: Sequence[str], configs: Sequence[AdapterConfig], tensors: Sequence[dict[str, torch.Tensor]],
                  weights: Sequence[float], average: bool) -> dict[str, torch.Tensor]:
    """Biases, LayerNorms, embeddings and head of the combination (see add_weighted_adapter)."""
    rest = [{n: t for n, t in ts.items() if not is_lora_factor(n)} for ts in tensors]
    if not average:
        if len(names) > 1:
            logger.warning("the combination of %s takes biases, LayerNorms and the head (%s, %s) from %r only; "
                           "pass average_non_lora=True to average them when their shapes match",
                           list(names), configs[0].task or configs[0].task_type, configs[0].head, names[0])
        return {n: t.detach().clone() for n, t in rest[0].items()}
    differences = []
    for name, other in zip(names[1:], rest[1:], strict=True):
        if set(other) != set(rest[0]):
            only = sorted(set(other) ^ set(rest[0]))
            differences.append(f"{name!r} and {names[0]!r} hold different tensors (e.g. {only[:2]})")
        else:
            differences += [f"{n}: {tuple(other[n].shape)} in {name!r} vs {tuple(t.shape)} in {names[0]!r}"
                            for n, t in rest[0].items() if other[n].shape != t.shape]
    total = float(sum(weights))
    if abs(total) < 1e-12:
        differences.append(f"the weights sum to {total}, so no weighted average exists")
    if differences:
        raise ConfigError("cannot average biases, LayerNorms and heads: " + "; ".join(differences[:4])
                          + " (pass average_non_lora=False to take them from the first adapter)")
    return {n: sum((w / total) * r[n] for r, w in zip(rest, weights, strict=True)) for n in rest[0]}  # type: ignore[misc]

"""Several adapters on one frozen base: a bank of named adapters, switching, disabling, mixed batches.

A `LoraWrapperRoberta` always has one *active* adapter living in its modules (LoRA layers,
trained biases / LayerNorms / embeddings, and its head). Every other loaded adapter waits in
the model's `AdapterBank` as plain tensors plus its `AdapterConfig`. `set_adapter(name)`:

1. stashes the active adapter's tensors in the bank (so training progress is kept),
2. rebuilds the LoRA layers and the head only when the new adapter's rank / targets / head differ,
3. puts back the *pristine* base tensors (as loaded, before any training) that the new adapter
   does not bring itself, then copies the new adapter's tensors in.

Every tensor the forward pass reads is then bit-for-bit what `LoraWrapperRoberta.from_adapter`
would build, so predictions equal loading that adapter alone exactly (same device and attention
kernel). Switching copies about one adapter's worth of memory (~1.7 MB for roberta-base r=8):
~6 ms on a 2-core CPU for roberta-base, ~30 ms when LoRA layers and head must be rebuilt.

Pristine base tensors are kept on the CPU, by their name in a LoRA-free encoder. Any base tensor
an adapter overwrites is copied there before it is first overwritten: at construction for the
model's own adapter, and at the first install of any adapter that trains more (embeddings,
or everything for `method="full"`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel
from transformers.models.roberta.modeling_roberta import RobertaSelfAttention

from roberta_lora.adapter_config import AdapterConfig
from roberta_lora.adapter_io import check_tensors, read_adapter_config, read_adapter_tensors
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.heads import build_classification_head, build_question_answering_head
from roberta_lora.injection import LoraRobertaSelfAttention, inject_lora, lora_layers
from roberta_lora.lora import LoraLinear

if TYPE_CHECKING:
    from roberta_lora.model import LoraWrapperRoberta

DEFAULT_ADAPTER = "default"
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass
class AdapterBank:
    """The adapters of one model. `configs` holds every adapter (the active one included, in load
    order); `stored` the tensors of the inactive ones; `pristine` the base tensors as loaded."""

    active: str = DEFAULT_ADAPTER
    configs: dict[str, AdapterConfig] = field(default_factory=dict)
    stored: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    pristine: dict[str, torch.Tensor] = field(default_factory=dict)
    base_names: dict[str, frozenset[str]] = field(default_factory=dict)  # base tensors each adapter overwrites
    disabled: bool = False

    def require_enabled(self, action: str) -> None:
        if self.disabled:
            raise ConfigError(f"cannot {action} inside `with model.disable_adapter():`; leave the context first")

    def require_known(self, name: str) -> None:
        if name not in self.configs:
            raise ConfigError(f"no adapter named {name!r}; loaded adapters: {list(self.configs)}")


# ----------------------------------------------------------------------------- which tensors
def head_name(config: AdapterConfig) -> str:
    """The model attribute holding this adapter's head: "classifier" (GLUE) or "qa_outputs" (SQuAD)."""
    return "classifier" if config.task_type == "glue" else "qa_outputs"


def adapter_parameters(encoder: nn.Module, head: nn.Module, config: AdapterConfig) -> dict[str, nn.Parameter]:
    """The parameters an adapter trains and saves, named as in `LoraWrapperRoberta.named_parameters()`.

    method "full": everything; "head": the head only; "lora": LoRA factors, the head, and the
    biases / LayerNorms / embeddings the config's train_* flags ask for.
    """
    prefix = head_name(config)
    selected = {f"roberta.{n}": p for n, p in encoder.named_parameters()} if config.method == "full" else {}
    if config.method == "lora":
        for path, module in encoder.named_modules():
            if isinstance(module, LoraLinear):
                selected[f"roberta.{path}.lora_A.weight"] = module.lora_A.weight
                selected[f"roberta.{path}.lora_B.weight"] = module.lora_B.weight
            elif config.train_layer_norms and isinstance(module, nn.LayerNorm):
                selected.update({f"roberta.{path}.{n}": p for n, p in module.named_parameters(recurse=False)})
            elif config.train_embeddings and isinstance(module, nn.Embedding):
                selected[f"roberta.{path}.weight"] = module.weight
            elif config.train_biases and isinstance(module, nn.Linear) and module.bias is not None:
                selected[f"roberta.{path}.bias"] = module.bias
    selected.update({f"{prefix}.{n}": p for n, p in head.named_parameters()})
    return selected


def is_lora_factor(name: str) -> bool:
    return name.endswith(_LORA_SUFFIXES)


def base_name(name: str) -> str | None:
    """An adapter tensor's name in a plain, LoRA-free encoder, or None for LoRA factors and heads.

    "roberta.encoder.layer.0.attention.self.query.base_layer.bias" -> "encoder.layer.0.attention.self.query.bias".
    `base_layer` is the attribute under which `LoraLinear` keeps the wrapped layer.
    """
    if not name.startswith("roberta.") or is_lora_factor(name):
        return None
    return name.removeprefix("roberta.").replace(".base_layer.", ".")


# Skeletons by what decides an adapter's tensor names and shapes: building one (a meta RobertaModel
# plus injection) is most of the cost of a named load, and a server loads many adapters of one shape.
_SKELETONS: dict[tuple, dict[str, torch.Tensor]] = {}


def skeleton_tensors(config: AdapterConfig, encoder_config: RobertaConfig) -> dict[str, torch.Tensor]:
    """Names and shapes (on the meta device, nothing allocated) of the tensors an adapter must hold."""
    key = (config.method, tuple(config.targets), config.lora_rank, config.task_type, config.num_classes,
           config.head, config.train_biases, config.train_layer_norms, config.train_embeddings,
           encoder_config.to_json_string())
    if key not in _SKELETONS:
        _SKELETONS[key] = _build_skeleton(config, encoder_config)
    return dict(_SKELETONS[key])


@torch.no_grad()
def _build_skeleton(config: AdapterConfig, encoder_config: RobertaConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        encoder = RobertaModel(encoder_config, add_pooling_layer=False)
        if config.method == "lora":
            inject_lora(encoder, config.targets, config.lora_rank, config.lora_alpha, config.lora_dropout)
        head = _build_head(config, encoder_config)
    return dict(adapter_parameters(encoder, head, config))


def _build_head(config: AdapterConfig, encoder_config: RobertaConfig, generator: torch.Generator | None = None):
    if config.task_type == "glue":
        return build_classification_head(config.head, encoder_config, config.num_classes, config.head_dropout, generator)
    return build_question_answering_head(encoder_config, generator)


# ----------------------------------------------------------------------------- encoder surgery
def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, child, new)


def unwrap_lora(encoder: nn.Module) -> dict[str, LoraLinear]:
    """Put each LoRA layer's base layer back in its place; returns the LoRA layers for `rewrap_lora`."""
    layers = lora_layers(encoder)
    for path, layer in layers.items():
        assert not layer.merged, "unmerge before unwrapping"  # the base weight must be the plain one
        _set_submodule(encoder, path, layer.base_layer)
    return layers


def rewrap_lora(encoder: nn.Module, layers: dict[str, LoraLinear]) -> None:
    for path, layer in layers.items():
        _set_submodule(encoder, path, layer)


def strip_lora(encoder: nn.Module) -> None:
    """Make `encoder` a plain RobertaModel again: no LoraLinear, no LoraRobertaSelfAttention."""
    unwrap_lora(encoder)
    for path, module in list(encoder.named_modules()):
        if isinstance(module, LoraRobertaSelfAttention):
            with torch.device("meta"):  # its fresh projections are replaced at once, as in from_attention
                plain = RobertaSelfAttention(module.config, is_causal=module.is_causal, layer_idx=module.layer_idx)
            plain.query, plain.key, plain.value, plain.dropout = module.query, module.key, module.value, module.dropout
            plain.train(module.training)
            _set_submodule(encoder, path, plain)


# ----------------------------------------------------------------------------- bank operations
def overwritten_base_names(tensors: dict[str, torch.Tensor]) -> frozenset[str]:
    """The plain names of the base tensors among an adapter's tensors (biases, LayerNorms, ...)."""
    return frozenset(name for name in map(base_name, tensors) if name is not None)


def snapshot_pristine(model: LoraWrapperRoberta, names: frozenset[str]) -> None:
    """Copy (to the CPU) the base tensors in `names` that are not saved yet.

    Only valid while those tensors still hold the base values: called at construction and just
    before an adapter that overwrites them is installed (no earlier adapter touched them, or
    they would already be saved).
    """
    pristine = model._bank.pristine
    missing = names - pristine.keys()
    if missing:
        live = _live_base_parameters(model)
        pristine.update({name: live[name].detach().to("cpu", copy=True) for name in sorted(missing)})


def _live_base_parameters(model: LoraWrapperRoberta) -> dict[str, nn.Parameter]:
    """The encoder's base parameters by their plain names (LoRA factors left out)."""
    named = ((base_name(f"roberta.{n}"), p) for n, p in model.roberta.named_parameters())
    return {name: p for name, p in named if name is not None}


def adapter_tensors(model: LoraWrapperRoberta, name: str) -> dict[str, torch.Tensor]:
    """The tensors of adapter `name` (the live ones, not copied, for the active adapter)."""
    bank = model._bank
    bank.require_known(name)
    if name == bank.active:
        bank.require_enabled("read the active adapter")
        return model.adapter_state_dict()
    return bank.stored[name]


def load_named_adapter(model: LoraWrapperRoberta, directory: Path, name: str, allow_base_mismatch: bool) -> AdapterConfig:
    """Read an adapter folder into the bank under `name` (it does not become active)."""
    bank = model._bank
    if not isinstance(name, str) or not name:
        raise ConfigError(f"adapter_name must be a non-empty string, got {name!r}")
    if name in bank.configs:
        raise AdapterError(f"an adapter named {name!r} is already loaded; delete_adapter({name!r}) first or pick another name")
    config, digest = read_adapter_config(directory)
    model._check_base(config, directory, allow_base_mismatch)
    if config.method == "full" and any(not p.is_floating_point() for p in model.roberta.parameters()):
        raise AdapterError(f"adapter {directory} replaces every base weight (method 'full'); it cannot be "
                           "loaded on a quantized base: load it on a full-precision one")
    tensors = read_adapter_tensors(directory, digest)
    expected = skeleton_tensors(config, model.config)
    check_tensors(tensors, expected, str(directory))
    live = model.adapter_config
    device = next(model.roberta.parameters()).device
    bank.configs[name] = replace(config, base_fingerprint=live.base_fingerprint, base_model=live.base_model)
    bank.stored[name] = {n: t.to(device) for n, t in tensors.items()}
    bank.base_names[name] = overwritten_base_names(expected)
    return config


def add_to_bank(model: LoraWrapperRoberta, name: str, config: AdapterConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Register an adapter built in memory (e.g. a weighted combination), checking its tensors."""
    if name in model._bank.configs:
        raise ConfigError(f"an adapter named {name!r} already exists; delete_adapter({name!r}) first or pick another name")
    expected = skeleton_tensors(config, model.config)
    check_tensors(tensors, expected, f"adapter {name!r}")
    model._bank.configs[name] = config
    model._bank.stored[name] = tensors
    model._bank.base_names[name] = overwritten_base_names(expected)


def set_adapter(model: LoraWrapperRoberta, name: str) -> None:
    """Make `name` the active adapter (see the module docstring for what is copied)."""
    bank = model._bank
    bank.require_enabled("switch adapters")
    bank.require_known(name)
    if name == bank.active:
        return
    was_merged = model.merged
    model.unmerge_adapter()
    bank.stored[bank.active] = {n: t.detach().clone() for n, t in model.adapter_state_dict().items()}
    config = bank.configs[name]
    snapshot_pristine(model, bank.base_names[name])
    _build_structure(model, bank.configs[bank.active], config)
    bank.active = name
    model.freeze_base()
    _install_tensors(model, bank.stored.pop(name))
    if was_merged:
        model.merge_adapter()


def _build_structure(model: LoraWrapperRoberta, old: AdapterConfig, new: AdapterConfig) -> None:
    """Rebuild the LoRA layers and the head when `new` needs other shapes than `old`."""
    def lora_spec(c: AdapterConfig) -> tuple | None:
        return (tuple(c.targets), c.lora_rank, float(c.lora_alpha), float(c.lora_dropout)) if c.method == "lora" else None

    def head_spec(c: AdapterConfig) -> tuple:
        return ("qa",) if c.task_type != "glue" else ("glue", c.head, c.num_classes, float(c.head_dropout))

    device = next(model.roberta.parameters()).device
    # Fresh layers draw initial values that are overwritten at once; switching must not move the global RNG.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if lora_spec(old) != lora_spec(new):
            strip_lora(model.roberta)
            model.replaced_modules = []
            if new.method == "lora":
                model.replaced_modules = inject_lora(
                    model.roberta, new.targets, new.lora_rank, new.lora_alpha, new.lora_dropout
                )
        if head_spec(old) != head_spec(new):
            old_head = getattr(model, head_name(old))
            dtype = next(old_head.parameters()).dtype
            delattr(model, head_name(old))
            setattr(model, head_name(new), _build_head(new, model.config).to(device=device, dtype=dtype))
    model.train(model.training)  # new modules start in train mode; follow the model's mode


@torch.no_grad()
def _install_tensors(model: LoraWrapperRoberta, tensors: dict[str, torch.Tensor]) -> None:
    """Pristine base values where the adapter brings none, then the adapter's own tensors."""
    brought = {base_name(n) for n in tensors}
    live_base = _live_base_parameters(model)
    for plain, tensor in model._bank.pristine.items():
        if plain not in brought:
            live_base[plain].copy_(tensor)
    live = dict(model.named_parameters())
    for name, tensor in tensors.items():
        live[name].copy_(tensor)


def delete_adapter(model: LoraWrapperRoberta, name: str) -> None:
    bank = model._bank
    bank.require_known(name)
    if name == bank.active:
        others = [n for n in bank.configs if n != name]
        raise ConfigError(
            f"adapter {name!r} is active; call set_adapter() with another one first (loaded: {others})"
            if others else f"adapter {name!r} is the only one; a model always has an active adapter"
        )
    del bank.configs[name], bank.stored[name], bank.base_names[name]


@contextlib.contextmanager
def disable_adapter(model: LoraWrapperRoberta) -> Iterator[LoraWrapperRoberta]:
    """Inside the context the encoder is the plain base: no LoRA, base biases / LayerNorms / embeddings.

    The active adapter's head still runs on top (a head has no "base" version), so `model(...)`
    keeps its output type and `model.roberta(...)` gives exactly the base's hidden states. The
    same module objects come back on exit, so an optimizer built before keeps working.
    """
    bank = model._bank
    bank.require_enabled("nest disable_adapter()")
    was_merged = model.merged
    model.unmerge_adapter()
    layers = unwrap_lora(model.roberta)
    live = dict(model.roberta.named_parameters())  # plain names now that LoRA is unwrapped
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, tensor in bank.pristine.items():
                saved[name] = live[name].detach().clone()
                live[name].copy_(tensor)
        bank.disabled = True
        yield model
    finally:
        with torch.no_grad():
            for name, tensor in saved.items():
                live[name].copy_(tensor)
        rewrap_lora(model.roberta, layers)
        bank.disabled = False
        if was_merged:
            model.merge_adapter()


# ----------------------------------------------------------------------------- mixed-task batches
class MultiAdapterPredictor:
    """Answers a batch in which every example names its own adapter.

    Examples are grouped by adapter and each group runs as one sub-batch with that adapter
    active, keeping the batch's padding. Each example's output is therefore exactly what the
    single-adapter model (`LoraWrapperRoberta.from_adapter`) gives for that group with the same
    padding; against the example run alone (a one-row batch, padded or not) the difference is
    float rounding (<1e-5): matrix kernels may sum in another order for another batch shape,
    e.g. a one-row matrix-vector product in the head. The active adapter is restored afterwards.

    Args:
        model: a model with the adapters loaded (`model.load_adapter(dir, name)`); put in eval mode.
    """

    def __init__(self, model: LoraWrapperRoberta) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def predict(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, adapters: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One result per example: {"adapter", "task", "task_type"} plus "logits" (C,) and "prediction"
        (label name, class id or regression score) for GLUE, or "start_logits" / "end_logits" (T,) for SQuAD.
        """
        if len(adapters) != input_ids.size(0):
            raise ConfigError(f"got {len(adapters)} adapter names for a batch of {input_ids.size(0)} examples")
        for name in dict.fromkeys(adapters):
            self.model._bank.require_known(name)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        results: list[dict[str, Any]] = [{} for _ in adapters]
        previous = self.model.active_adapter
        try:
            for name in dict.fromkeys(adapters):  # first-appearance order
                rows = [i for i, a in enumerate(adapters) if a == name]
                self.model.set_adapter(name)
                index = torch.tensor(rows, device=input_ids.device)
                output = self.model(input_ids.index_select(0, index), attention_mask.index_select(0, index))
                config = self.model.adapter_config
                for k, row in enumerate(rows):
                    results[row] = {"adapter": name, "task": config.task, "task_type": config.task_type,
                                    **_example_output(config, output, k)}
        finally:
            self.model.set_adapter(previous)
        return results

    def predict_texts(
        self, tokenizer: Any, examples: Sequence[str | tuple[str, str]], adapters: Sequence[str], max_length: int = 512
    ) -> list[dict[str, Any]]:
        """Tokenize single sentences and sentence pairs (question, context for SQuAD) together, then predict.

        Inputs longer than `max_length` are truncated; long SQuAD contexts need the windows of
        squad_features instead.
        """
        encoded = [tokenizer(*(e if isinstance(e, tuple) else (e,)), truncation=True, max_length=max_length)
                   for e in examples]
        batch = tokenizer.pad(encoded, return_tensors="pt")
        device = next(self.model.parameters()).device
        return self.predict(batch["input_ids"].to(device), batch["attention_mask"].to(device), adapters)


def _example_output(config: AdapterConfig, output: Any, k: int) -> dict[str, Any]:
    if config.task_type != "glue":
        return {"start_logits": output.start_logits[k], "end_logits": output.end_logits[k]}
    logits = output.logits[k]
    if config.num_classes == 1:
        prediction: Any = logits[0].item()
    else:
        index = int(logits.argmax())
        prediction = config.label_names[index] if config.label_names else index
    return {"logits": logits, "prediction": prediction}

"""`AdapterBank`: several named adapters on one frozen base, one of them active at a time.

The bank owns one `LoraWrapperRoberta`. The active adapter lives in the model's modules; every
other one waits here as plain tensors plus its `AdapterConfig`. `set_adapter(name)` keeps the
outgoing adapter's current tensors (training progress is not lost) and hands the new one to
`LoraWrapperRoberta.apply_adapter`, which rebuilds LoRA layers and head only when shapes differ
and puts back the base's own values wherever the new adapter brings none. Every tensor the
forward pass reads is then bit-for-bit what `LoraWrapperRoberta.from_adapter` builds, so
predictions equal loading that adapter alone exactly (same device and attention kernel).
Switching copies about one adapter's worth of memory (~1.7 MB for roberta-base r=8).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roberta_lora.adapters.combine import combine_adapters
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.model.adapter_files import check_tensors, read_adapter_tensors, save_adapter_files
from roberta_lora.model.base import BaseSpec
from roberta_lora.model.config import AdapterConfig, read_adapter_config
from roberta_lora.model.hub_card import push_adapter
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.sources import adapter_folder

DEFAULT_ADAPTER = "default"


class AdapterBank(nn.Module):
    """Named adapters on one `LoraWrapperRoberta`; calling the bank runs the model with the active one.

    Args:
        model: the model; its own adapter becomes the bank's first one, named `name`.
        name: the name of that first adapter (default "default").
    """

    def __init__(self, model: LoraWrapperRoberta, name: str = DEFAULT_ADAPTER) -> None:
        super().__init__()
        _check_name(name)
        self.model = model
        self._active = name
        self._configs: dict[str, AdapterConfig] = {name: model.adapter_config}  # load order, active included
        self._stored: dict[str, dict[str, torch.Tensor]] = {}  # the inactive adapters' tensors
        self.train(model.training)  # the bank takes the model's mode (a new nn.Module starts in train mode)

    @classmethod
    def from_adapter(cls, directory: str | Path, name: str = DEFAULT_ADAPTER, model_id: BaseSpec | None = None,
                     allow_base_mismatch: bool = False, **kwargs: Any) -> AdapterBank:
        """A bank whose first adapter (named `name`) is loaded from `directory` (see
        `LoraWrapperRoberta.from_adapter` for the other arguments); in eval mode."""
        model = LoraWrapperRoberta.from_adapter(directory, model_id=model_id, allow_base_mismatch=allow_base_mismatch,
                                                **kwargs)
        return cls(model, name)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, adapter_name: str = DEFAULT_ADAPTER,
                        **kwargs: Any) -> AdapterBank:
        """PEFT's name for `from_adapter`: a folder or a Hub repo id `user/name[@revision]`."""
        return cls.from_adapter(pretrained_model_name_or_path, name=adapter_name, **kwargs)

    def save_pretrained(self, save_directory: str | Path, adapter_name: str | None = None) -> Path:
        """PEFT's name for `save_adapter`: one adapter's folder (default: the active one)."""
        return self.save_adapter(save_directory, adapter_name=adapter_name)

    def push_to_hub(self, repo_id: str, adapter_name: str | None = None, **kwargs: Any) -> str:
        """Upload one adapter (default: the active one) as `LoraWrapperRoberta.push_to_hub` does."""
        with tempfile.TemporaryDirectory(prefix="roberta-lora-push-") as staging:
            folder = self.save_adapter(Path(staging) / "adapter", adapter_name=adapter_name)  # checks the name
            return push_adapter(folder, repo_id, **kwargs)

    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The active adapter's forward (`LoraWrapperRoberta.forward`), or with `adapter_names` (one name per
        row, PEFT's argument) a mixed batch: row i answered by adapter `adapter_names[i]`, all in one encoder
        pass through the batched engine (`BatchedAdapters`), equal to each adapter alone. Mixed batches are
        for inference: no labels, no merged bank; the adapters must give logits of one shape (the same
        number of classes, or all SQuAD), else use `BatchedAdapters.forward`, which answers row by row."""
        if adapter_names is None:
            return self.model(*args, **kwargs)
        return self._mixed_forward(adapter_names, *args, **kwargs)

    def _mixed_forward(self, adapter_names: Sequence[str], input_ids: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                       **rest: Any) -> Any:
        from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

        given = sorted(k for k, v in rest.items() if v is not None)
        if given:
            raise ConfigError(f"a mixed batch (adapter_names=...) takes input_ids, attention_mask and token_type_ids "
                              f"only, got {given}: it is for inference; train one adapter at a time (set_adapter)")
        if self.merged:
            raise ConfigError("a merged bank cannot answer a mixed batch (its base holds one adapter's update); "
                              "call unmerge_adapter() first")
        if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
            raise ConfigError(f"adapter_names={adapter_names!r:.80}: expected a list with one adapter name per row")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ConfigError(f"input_ids: expected a (batch, tokens) tensor, got {type(input_ids).__name__}")
        for name in dict.fromkeys(adapter_names):
            if not isinstance(name, str):
                raise ConfigError(f"adapter_names holds {name!r:.80}; expected adapter names (str)")
            self._require_known(name)
        kinds = {(c.task_type == "glue", c.num_classes if c.task_type == "glue" else None)
                 for c in (self.get_config(n) for n in dict.fromkeys(adapter_names))}
        if len(kinds) > 1:
            raise ConfigError(f"adapters {sorted(set(adapter_names))} give outputs of different shapes "
                              f"({sorted(kinds, key=str)}); use roberta_lora.BatchedAdapters.forward, which returns "
                              "one result per row")
        engine = self._engine_for(adapter_names)
        results = engine.forward(input_ids, attention_mask, list(adapter_names), token_type_ids=token_type_ids)
        if "logits" in results[0]:
            return SequenceClassifierOutput(logits=torch.stack([r["logits"] for r in results]))
        return QuestionAnsweringModelOutput(start_logits=torch.stack([r["start_logits"] for r in results]),
                                            end_logits=torch.stack([r["end_logits"] for r in results]))

    def _engine_for(self, names: Sequence[str]) -> Any:
        """The batched engine (built on first use, one copy of the plain base) holding the current tensors of
        every adapter in `names`: an adapter whose config or tensors changed since (training, set_adapter,
        delete / add) is loaded again."""
        from roberta_lora.adapters.batched import BatchedAdapters

        if getattr(self, "_engine", None) is None:
            self._engine, self._engine_keys = BatchedAdapters(self.model), {}
        for name in list(self._engine_keys):
            if name not in self._configs:
                self._engine.remove(name)
                del self._engine_keys[name]
        for name in dict.fromkeys(names):
            tensors = self.adapter_tensors(name)
            key = (id(self._configs[name]), self._active == name,
                   tuple((n, id(t), t._version) for n, t in sorted(tensors.items())))
            if self._engine_keys.get(name) == key:
                continue
            if name in self._engine_keys:
                self._engine.remove(name)
            self._engine.add_tensors(name, self.get_config(name), {n: t.detach() for n, t in tensors.items()})
            self._engine_keys[name] = key
        return self._engine

    # ----------------------------------------------------------------------------- what is here
    @property
    def active_adapter(self) -> str:
        """The name of the adapter the forward pass uses."""
        return self._active

    @property
    def adapters(self) -> list[str]:
        """Names of every loaded adapter, in load order."""
        return list(self._configs)

    @property
    def adapter_config(self) -> AdapterConfig:
        """The active adapter's configuration."""
        return self.model.adapter_config

    @property
    def task_type(self) -> str:
        """The active adapter's task type."""
        return self.model.task_type

    @property
    def config(self) -> Any:
        """The encoder's transformers config."""
        return self.model.config

    def get_config(self, name: str) -> AdapterConfig:
        """The configuration of adapter `name`."""
        self._require_known(name)
        return self.model.portable_adapter()[0] if name == self._active else self._configs[name]

    def adapter_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of adapter `name` (for the active one: the model's live tensors, not copied)."""
        self._require_known(name)
        return self.model.portable_adapter()[1] if name == self._active else self._stored[name]

    def _require_known(self, name: str) -> None:
        if name not in self._configs:
            raise ConfigError(f"no adapter named {name!r}; loaded adapters: {list(self._configs)}")

    # ----------------------------------------------------------------------------- adding, removing, switching
    def load_adapter(self, directory: str | Path, adapter_name: str, allow_base_mismatch: bool = False) -> AdapterConfig:
        """Read an adapter folder into the bank under `adapter_name` (any task, rank or head); it does not
        become active: call `set_adapter(adapter_name)`.

        Raises AdapterError for a corrupt file, tensors that do not fit the config, a base of another
        family (model_type), or another base (unless `allow_base_mismatch`, which only warns); ConfigError
        for a name already in use.
        """
        self._check_new_name(adapter_name)
        directory = adapter_folder(directory)  # a folder, or a Hub repo id user/name[@rev]
        config, digest = read_adapter_config(directory)
        self.model.check_base(config, directory, allow_base_mismatch)
        tensors = read_adapter_tensors(directory, digest)
        self.add_adapter(adapter_name, config, tensors, source=str(directory))
        return config

    def add_adapter(self, name: str, config: AdapterConfig, tensors: dict[str, torch.Tensor],
                    source: str | None = None) -> None:
        """Register an adapter built in memory (e.g. a weighted combination), checking its family and tensors."""
        self._check_new_name(name)
        config.validate()
        self.model.check_family(config, source or f"adapter {name!r}")  # one bank holds adapters of one base
        if config.method == "full" and any(not p.is_floating_point() for p in self.model.roberta.parameters()):
            raise AdapterError(f"adapter {source or name!r} replaces every base weight (method 'full'); it cannot be "
                               "loaded on a quantized base: load it on a full-precision one")
        check_tensors(tensors, self.model.expected_adapter_tensors(config), source or f"adapter {name!r}")
        live = self.model.adapter_config
        device = next(self.model.parameters()).device
        self._configs[name] = replace(config, base_fingerprint=live.base_fingerprint, base_model=live.base_model)
        self._stored[name] = {n: t.to(device) for n, t in tensors.items()}

    def _check_new_name(self, name: str) -> None:
        _check_name(name)
        if name in self._configs:
            raise ConfigError(f"an adapter named {name!r} is already loaded; delete_adapter({name!r}) first "
                              "or pick another name")

    def set_adapter(self, name: str) -> None:
        """Make `name` the active adapter: its LoRA layers, biases, LayerNorms and head take over.

        The outgoing adapter's current tensors are kept (training progress is not lost). LoRA
        layers and heads are rebuilt when rank, targets or head differ, so build the optimizer
        after switching. A merged model stays merged (with the new adapter).
        """
        self._require_known(name)
        if name == self._active:
            return
        outgoing_config, live = self.model.portable_adapter()  # PiSSA / OLoRA: the whole update, rank 2r
        outgoing = {n: t.detach().clone() for n, t in live.items()}
        self.model.apply_adapter(self._configs[name], self._stored[name], source=f"adapter {name!r}")
        self._configs[self._active], self._stored[self._active] = outgoing_config, outgoing
        del self._stored[name]
        self._configs[name] = self.model.adapter_config
        self._active = name

    def delete_adapter(self, name: str) -> None:
        """Forget an inactive adapter (the active one cannot be deleted: switch first)."""
        self._require_known(name)
        if name == self._active:
            others = [n for n in self._configs if n != name]
            raise ConfigError(
                f"adapter {name!r} is active; call set_adapter() with another one first (loaded: {others})"
                if others else f"adapter {name!r} is the only one; a bank always has an active adapter"
            )
        del self._configs[name], self._stored[name]

    def save_adapter(self, directory: str | Path, adapter_name: str | None = None,
                     metrics: dict | None = None, extra_files: dict[str, str] | None = None) -> Path:
        """Write one adapter's folder (default: the active one) as one unit, with `extra_files`
        (file name -> text, e.g. {"README.md": card}); see `LoraWrapperRoberta.save_adapter`."""
        name = self._active if adapter_name is None else adapter_name
        self._require_known(name)
        if name == self._active:
            return self.model.save_adapter(directory, metrics=metrics, extra_files=extra_files)
        config = replace(self._configs[name], metrics=dict(metrics or self._configs[name].metrics))
        save_adapter_files(directory, self._stored[name], config, extra_files)
        return Path(directory)

    def add_weighted_adapter(
        self,
        adapters: Sequence[str],
        weights: Sequence[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        average_non_lora: bool = False,
    ) -> AdapterConfig:
        """Add `adapter_name`, a weighted combination of LoRA adapters on the same targets (not activated).

        LoRA factors are combined layer by layer (`adapters.combine.combine_lora_factors`): "cat"
        stacks the ranks and is exactly the weighted sum of the updates, "svd" its best rank-`svd_rank`
        approximation, "linear" PEFT's formula (equal ranks, cross terms). Biases, LayerNorms,
        embeddings and the head are not low-rank: by default they come from the first adapter (a
        warning says so); `average_non_lora=True` averages them (identical shapes needed).
        `weights` are one finite real number per adapter, not all zero; anything else is a ConfigError.
        """
        if isinstance(adapters, str) or not isinstance(adapters, Sequence):
            raise ConfigError(f"cannot combine adapters: adapters={adapters!r:.80} (expected a list of adapter names, "
                              f"e.g. {list(self._configs)[:2]})")
        problems = [f"unknown adapter {n!r} (loaded: {list(self._configs)})" for n in adapters if n not in self._configs]
        if adapter_name in self._configs:
            problems.append(f"adapter_name {adapter_name!r} already exists")
        if problems:
            raise ConfigError("cannot combine adapters: " + "; ".join(problems))
        config, tensors = combine_adapters(
            list(adapters), [self.get_config(n) for n in adapters], [self.adapter_tensors(n) for n in adapters],
            weights, self.model.config, combination_type, svd_rank, average_non_lora,
        )
        self.add_adapter(adapter_name, config, tensors)
        return config

    # ----------------------------------------------------------------------------- the active adapter
    def disable_adapter(self) -> AbstractContextManager[LoraWrapperRoberta]:
        """The plain base encoder within the block (see `LoraWrapperRoberta.disable_adapter`)."""
        return self.model.disable_adapter()

    def merge_adapter(self) -> None:
        self.model.merge_adapter()

    def unmerge_adapter(self) -> None:
        self.model.unmerge_adapter()

    @property
    def merged(self) -> bool:
        return self.model.merged


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"adapter_name must be a non-empty string, got {name!r}")

"""The forward-only part of `serve.py`: one mixed-adapter forward pass, ours against PEFT and the base alone.

Every variant answers the same batch (rows of random token ids, row i asking for adapter i mod N) on the
same random base weights, with the same N LoRA adapters (same ranks, alpha, targets, random non-zero A and
B, no bias or LayerNorm training, so the encoders do the same work):

- ours:  `BatchedAdapters.forward` (the base once for the batch, each row's LoRA update from its rank's
         tables; each adapter's tiny head runs on its rows);
- peft:  a real `peft.PeftModel` over a transformers `RobertaModel` (encoder only: PEFT refuses
         `adapter_names` under a classification head) called with `adapter_names=[...]`, one per row;
- base:  the plain `RobertaModel`, no LoRA: the limit a mixed-adapter forward can reach.

Before timing, a few rows of two adapters are checked against that adapter alone
(`LoraWrapperRoberta.apply_adapter`): ours' logits, and the same head on PEFT's hidden states, must
agree, so the variants are known to compute the same thing.

A second measurement loads adapters of one rank plus one adapter of a much larger rank that the batches
never use, against the same adapters all of the small rank: what an unused large adapter costs.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from common import median, time_interleaved
from torch import nn

TARGETS = ("query", "value")
ALPHA = 16.0


@dataclass
class Adapter:
    """One adapter as both libraries get it: our config and tensors (named as in our adapter files)."""

    name: str
    config: Any  # roberta_lora.model.config.AdapterConfig
    tensors: dict[str, torch.Tensor]


def base_encoder(size: str) -> nn.Module:
    """A plain `RobertaModel` with random weights: roberta-base's dimensions (and vocabulary), or smaller."""
    from transformers import RobertaModel

    from roberta_lora.model.toy import roberta_base_config, toy_config

    config = {"base": lambda: roberta_base_config(),
              "small": lambda: toy_config(50265, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
              "tiny": lambda: toy_config(400)}[size]()
    torch.manual_seed(0)
    return RobertaModel(config, add_pooling_layer=False).eval()


def reference_model(base: nn.Module) -> Any:
    """A `LoraWrapperRoberta` on a copy of `base` that holds one adapter at a time (the reference), and
    whose config every adapter here starts from: LoRA on query and value only, nothing else trained."""
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    return LoraWrapperRoberta(model_id=copy.deepcopy(base), num_classes=2, targets=",".join(TARGETS),
                              lora_alpha=ALPHA, lora_dropout=0.0, train_biases=False, train_layer_norms=False,
                              seed=0).eval()


def make_adapters(reference: Any, ranks: list[int], seed: int = 0) -> list[Adapter]:
    """One adapter per entry of `ranks`, every tensor random (non-zero A and B, as after training)."""
    adapters = []
    for i, rank in enumerate(ranks):
        config = replace(reference.adapter_config, lora_rank=rank)
        generator = torch.Generator().manual_seed(seed + i)
        tensors = {name: torch.randn(meta.shape, generator=generator) * 0.05
                   for name, meta in reference.expected_adapter_tensors(config).items()}
        adapters.append(Adapter(f"a{i:02d}", config, tensors))
    return adapters


def build_ours(reference: Any, adapters: list[Adapter]) -> Any:
    from roberta_lora.adapters.batched import BatchedAdapters

    engine = BatchedAdapters(reference)
    for adapter in adapters:
        engine.add_tensors(adapter.name, adapter.config, adapter.tensors)
    return engine


def build_peft(base: nn.Module, adapters: list[Adapter]) -> nn.Module:
    """A `peft.PeftModel` over a copy of `base` holding the same LoRA factors under the same names."""
    import peft

    from roberta_lora.model.tensors import is_lora_factor

    model = None
    for adapter in adapters:
        config = peft.LoraConfig(r=adapter.config.lora_rank, lora_alpha=adapter.config.lora_alpha, lora_dropout=0.0,
                                 target_modules=list(TARGETS), bias="none")
        if model is None:
            model = peft.get_peft_model(copy.deepcopy(base), config, adapter_name=adapter.name)
        else:
            model.add_adapter(adapter.name, config)
        # "roberta.encoder...query.lora_A.weight" (ours) -> "base_model.model.encoder...query.lora_A.weight" (PEFT's
        # saved form, which set_peft_model_state_dict files under the adapter's name).
        state = {"base_model.model." + name.removeprefix("roberta."): tensor
                 for name, tensor in adapter.tensors.items() if is_lora_factor(name)}
        loaded = peft.set_peft_model_state_dict(model, state, adapter_name=adapter.name)
        if loaded.unexpected_keys:
            raise RuntimeError(f"PEFT did not take {loaded.unexpected_keys[:3]} for {adapter.name}")
    assert model is not None
    return model.eval()


def make_batch(vocab_size: int, rows: int, tokens: int, adapters: list[Adapter]
               ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Random ids (rows, tokens), a full mask, and row i's adapter: adapters[i mod N]."""
    generator = torch.Generator().manual_seed(rows * 1000 + tokens)
    ids = torch.randint(3, vocab_size, (rows, tokens), generator=generator)
    return ids, torch.ones_like(ids), [adapters[i % len(adapters)].name for i in range(rows)]


def check_agreement(reference: Any, ours: Any, peft_model: nn.Module, adapters: list[Adapter],
                    ids: torch.Tensor, mask: torch.Tensor, names: list[str]) -> None:
    """Rows of the first adapter of each rank: ours and PEFT (under the adapter's own head) equal the adapter alone."""
    answers = ours.forward(ids, mask, names)
    with torch.inference_mode():
        hidden = peft_model(input_ids=ids, attention_mask=mask, adapter_names=names).last_hidden_state  # (B, T, H)
    checked = {}
    for adapter in adapters:
        checked.setdefault(adapter.config.lora_rank, adapter)
    for adapter in checked.values():
        rows = [i for i, name in enumerate(names) if name == adapter.name][:2]
        reference.apply_adapter(adapter.config, adapter.tensors)
        with torch.inference_mode():
            expected = reference(ids[rows], mask[rows]).logits  # (n, 2)
            theirs = reference.head_module(hidden[rows])
        mine = torch.stack([answers[i]["logits"] for i in rows])
        torch.testing.assert_close(mine, expected, atol=1e-4, rtol=1e-4, msg=f"ours, {adapter.name}")
        torch.testing.assert_close(theirs, expected, atol=1e-4, rtol=1e-4, msg=f"PEFT, {adapter.name}")


def timed(variants: dict[str, Callable[[], Any]], warmup: int, repeats: int, label: str) -> dict[str, float]:
    """Per variant, interleaved: median wall ms per call ("NAME"), median CPU ms of this process ("NAME_cpu":
    with one torch thread, the work itself, barely moved by other processes), and the fastest round's wall
    ms ("NAME_best": other processes only ever add time). Prints progress."""
    rounds = [0]
    first = next(iter(variants))

    def progress(call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            rounds[0] += 1
            print(f"  {label}: round {rounds[0]}/{warmup + repeats}", flush=True)
            return call()
        return run

    wrapped = {name: progress(call) if name == first else call for name, call in variants.items()}
    times = time_interleaved(wrapped, warmup, repeats)
    record = {}
    for name, t in times.items():
        record |= {name: 1000 * median(t.wall), f"{name}_cpu": 1000 * median(t.cpu), f"{name}_best": 1000 * min(t.wall)}
    return record


def mixed_forward(size: str, cases: list[tuple[int, int]], ranks: list[int], tokens: int, warmup: int,
                  repeats: int) -> list[dict[str, Any]]:
    """One record per (adapters, rows): median ms of ours, PEFT and the base alone."""
    base = base_encoder(size)
    reference = reference_model(base)
    records = []
    for count, rows in cases:
        adapters = make_adapters(reference, [ranks[i % len(ranks)] for i in range(count)])
        records.append({"adapters": count, "rows": rows,
                        **measure_case(base, reference, adapters, rows, tokens, warmup, repeats)})
        print(f"[forward] {records[-1]}", flush=True)
        gc.collect()
    return records


def measure_case(base: nn.Module, reference: Any, adapters: list[Adapter], rows: int, tokens: int, warmup: int,
                 repeats: int) -> dict[str, float]:
    started = time.perf_counter()
    ours, peft_model = build_ours(reference, adapters), build_peft(base, adapters)
    ids, mask, names = make_batch(base.config.vocab_size, rows, tokens, adapters)
    check_agreement(reference, ours, peft_model, adapters, ids, mask, names)
    label = f"{len(adapters)} adapters / {rows} rows"
    print(f"[forward] {label}: built and checked in {time.perf_counter() - started:.0f} s", flush=True)
    with torch.inference_mode():
        return timed({"ours": lambda: ours.forward(ids, mask, names),
                      "peft": lambda: peft_model(input_ids=ids, attention_mask=mask, adapter_names=names),
                      "base": lambda: base(input_ids=ids, attention_mask=mask)}, warmup, repeats, label)


def unused_large_rank(size: str, count: int, rows: int, rank: int, large: int, tokens: int, warmup: int,
                      repeats: int) -> dict[str, Any]:
    """`count` adapters of `rank` against `count - 1` of them plus one of rank `large` that no row asks for."""
    base = base_encoder(size)
    reference = reference_model(base)
    small = make_adapters(reference, [rank] * count)
    with_large = small[:-1] + [make_adapters(reference, [large], seed=count)[0]]
    with_large[-1].name = small[-1].name
    same, mixed = build_ours(reference, small), build_ours(reference, with_large)
    ids, mask, names = make_batch(base.config.vocab_size, rows, tokens, small[:-1])  # never the last adapter
    for engine in (same, mixed):  # both answer the same rows the same way
        reference.apply_adapter(small[0].config, small[0].tensors)
        with torch.inference_mode():
            expected = reference(ids[:1], mask[:1]).logits[0]
        torch.testing.assert_close(engine.forward(ids, mask, names)[0]["logits"], expected, atol=1e-4, rtol=1e-4)
    print(f"[forward] {count - 1} r={rank} + one unused r={large}: built and checked", flush=True)
    ms = timed({"same": lambda: same.forward(ids, mask, names), "mixed": lambda: mixed.forward(ids, mask, names)},
               warmup, repeats, f"unused r={large}")
    record = {"adapters": count, "rows": rows, "rank": rank, "large": large, **ms,
              "held_same": same.held_bytes(), "held_mixed": mixed.held_bytes()}
    print(f"[forward] {record}", flush=True)
    return record

"""Mixed-task batches: every example of a batch names its own adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from roberta_lora.adapters.bank import AdapterBank
from roberta_lora.errors import ConfigError
from roberta_lora.model.config import AdapterConfig
from roberta_lora.model.wrapper import LoraWrapperRoberta


class MultiAdapterPredictor:
    """Answers a batch in which every example names its own adapter.

    Examples are grouped by adapter and each group runs as one sub-batch with that adapter
    active, keeping the batch's padding. Each example's output is therefore exactly what the
    single-adapter model (`LoraWrapperRoberta.from_adapter`) gives for that group with the same
    padding; against the example run alone (a one-row batch, padded or not) the difference is
    float rounding (<1e-5): matrix kernels may sum in another order for another batch shape,
    e.g. a one-row matrix-vector product in the head. The active adapter is restored afterwards.

    Args:
        bank: the adapters (`bank.load_adapter(dir, name)`), or a single model (its adapter is then
            named "default"); put in eval mode.
    """

    def __init__(self, bank: AdapterBank | LoraWrapperRoberta) -> None:
        self.bank = (bank if isinstance(bank, AdapterBank) else AdapterBank(bank)).eval()

    @torch.no_grad()
    def predict(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, adapters: Sequence[str],
        token_type_ids: torch.Tensor | None = None,
    ) -> list[dict[str, Any]]:
        """One result per example: {"adapter", "task", "task_type"} plus "logits" (C,) and "prediction"
        (label name, class id or regression score) for GLUE, or "start_logits" / "end_logits" (T,) for SQuAD.
        `token_type_ids` (the tokenizer's, for BERT) are passed on where the family uses them.
        """
        if len(adapters) != input_ids.size(0):
            raise ConfigError(f"got {len(adapters)} adapter names for a batch of {input_ids.size(0)} examples")
        for name in dict.fromkeys(adapters):
            self.bank.get_config(name)  # ConfigError naming the loaded adapters when unknown
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        results: list[dict[str, Any]] = [{} for _ in adapters]
        previous = self.bank.active_adapter
        try:
            for name in dict.fromkeys(adapters):  # first-appearance order
                rows = [i for i, a in enumerate(adapters) if a == name]
                self.bank.set_adapter(name)
                index = torch.tensor(rows, device=input_ids.device)
                segments = None if token_type_ids is None else token_type_ids.index_select(0, index)
                output = self.bank(input_ids.index_select(0, index), attention_mask.index_select(0, index),
                                   token_type_ids=segments)
                config = self.bank.adapter_config
                for k, row in enumerate(rows):
                    results[row] = {"adapter": name, "task": config.task, "task_type": config.task_type,
                                    **_example_output(config, output, k)}
        finally:
            self.bank.set_adapter(previous)
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
        device = next(self.bank.parameters()).device
        segments = batch["token_type_ids"].to(device) if "token_type_ids" in batch else None
        return self.predict(batch["input_ids"].to(device), batch["attention_mask"].to(device), adapters, segments)


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

"""Cross-check against PEFT: same base weights and same A/B give the same logits and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import RobertaModel

from roberta_lora.lora.injection import lora_layers
from roberta_lora.model.toy import toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("targets, peft_targets", [
    ("query,value", ["query", "value"]),
    ("all-linear", ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]),
])
def test_logits_and_gradients_match_peft(targets: str, peft_targets: list[str]) -> None:
    torch.manual_seed(0)
    base = RobertaModel(toy_config(400), add_pooling_layer=False)
    ours = LoraWrapperRoberta(model_id=copy.deepcopy(base), targets=targets, lora_rank=4, lora_alpha=8,
                              lora_dropout=0.0, seed=0)
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=peft_targets, bias="none"),
    )
    ours.eval()  # no dropout anywhere: the comparison must be exact up to float rounding
    theirs.eval()
    # Give B non-zero values (at init both are zero) and copy our A/B into PEFT's layers.
    generator = torch.Generator().manual_seed(4)
    peft_modules = dict(theirs.base_model.model.named_modules())
    ours_layers = lora_layers(ours.roberta)
    assert len(ours_layers) == sum(1 for m in peft_modules.values() if hasattr(m, "lora_A") and m.lora_A)
    with torch.no_grad():
        for path, layer in ours_layers.items():
            layer.lora_B.weight.normal_(generator=generator)
            twin = peft_modules[path]
            twin.lora_A["default"].weight.copy_(layer.lora_A.weight)
            twin.lora_B["default"].weight.copy_(layer.lora_B.weight)
    ids = torch.randint(3, 400, (2, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    probe = torch.randn(2, 10, 32, generator=generator)
    hidden_ours = ours.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden_theirs = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden_ours, hidden_theirs, atol=1e-5, rtol=1e-5)
    (hidden_ours * probe).sum().backward()
    (hidden_theirs * probe).sum().backward()
    for path, layer in ours_layers.items():
        twin = peft_modules[path]
        for ours_grad, peft_grad in ((layer.lora_A.weight.grad, twin.lora_A["default"].weight.grad),
                                     (layer.lora_B.weight.grad, twin.lora_B["default"].weight.grad)):
            # Gradients reach a few hundred here; the fused q/k/v branch sums in another order, so
            # the tolerance is float32 rounding relative to the tensor's scale (seen: 1.7e-6 of it).
            torch.testing.assert_close(ours_grad, peft_grad, atol=1e-5 * float(peft_grad.abs().max()), rtol=1e-5)

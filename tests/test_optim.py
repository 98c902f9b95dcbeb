"""The optimizer: weight decay on matrices only (nanoGPT / transformers Trainer), never on biases or norms."""

from __future__ import annotations

import torch

from roberta_lora.model.toy import toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.training.optim import build_optimizer, parameter_groups


def test_only_matrices_decay() -> None:
    model = LoraWrapperRoberta(model_id=toy_config(400), seed=0, head="roberta", num_classes=3)
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed == {n for n, p in model.named_parameters() if p.requires_grad and p.ndim == 2}
    assert any(".lora_A." in n for n in decayed) and "classifier.dense.weight" in decayed
    assert not any(n.endswith(".bias") or "LayerNorm" in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == sum(p.requires_grad for p in model.parameters())


def test_a_step_with_zero_gradients_shrinks_matrices_and_leaves_biases_and_norms() -> None:
    model = LoraWrapperRoberta(model_id=toy_config(400), seed=0)
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "lora_B"):
                layer.lora_B.weight.fill_(1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()  # Adam's own update is 0 for a zero gradient: only decoupled decay acts
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        expected = before[name] * (1 - 0.1 * 0.5) if p.ndim == 2 else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)

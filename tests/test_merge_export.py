"""Merging: unmerge round trips, standalone models and checkpoints transformers loads, combining adapters."""

from __future__ import annotations

import logging

import pytest
import torch
from test_multi_adapter import batch, outputs, trained_model
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaModel,
)

from roberta_lora.adapters.bank import AdapterBank
from roberta_lora.adapters.combine import combine_lora_factors
from roberta_lora.adapters.merge import MERGE_INFO_NAME, load_merged
from roberta_lora.cli.main import main
from roberta_lora.errors import ConfigError
from roberta_lora.lora.injection import lora_layers
from roberta_lora.model.standalone import MergedLightClassifier

KINDS = {
    "squad": ({"task_type": "squad_v1", "targets": "all-linear", "lora_rank": 4, "lora_alpha": 8}, RobertaForQuestionAnswering),
    "roberta_head": ({"num_classes": 3, "head": "roberta", "label_names": ["a", "b", "c"]}, RobertaForSequenceClassification),
    "light_head": ({"num_classes": 2, "train_embeddings": True}, MergedLightClassifier),
    "regression": ({"num_classes": 1, "head": "roberta", "lora_rank": 2}, RobertaForSequenceClassification),
}


def standalone_outputs(model, ids, mask) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return [out.logits] if "logits" in out else [out.start_logits, out.end_logits]


@pytest.mark.parametrize("kind", list(KINDS))
def test_merge_unmerge_round_trip_and_standalone_model(tiny_model_dir, kind) -> None:
    kwargs, expected_class = KINDS[kind]
    model = trained_model(tiny_model_dir, seed=1, **kwargs)
    ids, mask = batch()
    before = outputs(model, ids, mask)
    model.merge_adapter()
    for merged, unmerged in zip(outputs(model, ids, mask), before, strict=True):
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    assert all(torch.equal(a, b) for a, b in zip(outputs(model, ids, mask), before, strict=True))

    standalone = model.merge_and_unload()
    assert type(standalone) is expected_class
    assert not any(lora_layers(standalone))
    for theirs, ours in zip(standalone_outputs(standalone.eval(), ids, mask), before, strict=True):
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # The wrapper is left as it was.
    assert not model.merged and all(torch.equal(a, b) for a, b in zip(outputs(model, ids, mask), before, strict=True))


def test_unload_returns_the_plain_base(tiny_model_dir) -> None:
    model = trained_model(tiny_model_dir, seed=2, train_embeddings=True)
    model.merge_adapter()
    base = model.unload()
    assert type(base) is RobertaModel and not lora_layers(base)
    plain = RobertaModel.from_pretrained(tiny_model_dir, add_pooling_layer=False).eval()
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(base.eval()(input_ids=ids, attention_mask=mask).last_hidden_state,
                           plain(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert model.merged  # untouched
    before = outputs(model, ids, mask)
    with torch.no_grad():  # the returned base owns its tensors: changing it leaves the wrapper alone
        for parameter in base.parameters():
            parameter.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(outputs(model, ids, mask), before, strict=True))
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state,
                           plain(input_ids=ids, attention_mask=mask).last_hidden_state)


def save_adapter(tiny_model_dir, tmp_path, kind: str):
    model = trained_model(tiny_model_dir, seed=3, **KINDS[kind][0])
    model.save_adapter(tmp_path / "adapter")
    return model, tmp_path / "adapter"


def test_cli_merge_squad_gives_a_checkpoint_transformers_loads(tiny_model_dir, tmp_path, capsys) -> None:
    model, adapter = save_adapter(tiny_model_dir, tmp_path, "squad")
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")]) == 0
    assert '"max_abs_logit_difference"' in capsys.readouterr().out
    qa = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert type(qa) is RobertaForQuestionAnswering
    encoded = tokenizer("Who wrote the book?", "The author wrote it in Paris.", return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    for theirs, ours in zip(standalone_outputs(qa, ids, mask), outputs(model, ids, mask), strict=True):
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_merged_squad_checkpoint_runs_in_the_question_answering_pipeline(tiny_model_dir, tmp_path) -> None:
    from transformers import pipelines

    if "question-answering" not in pipelines.SUPPORTED_TASKS:
        pytest.skip("this transformers version has no question-answering pipeline (removed in transformers 5)")
    _, adapter = save_adapter(tiny_model_dir, tmp_path, "squad")
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")]) == 0
    answer = pipelines.pipeline("question-answering", model=str(tmp_path / "merged"))(
        question="Who wrote the book?", context="The author wrote it in Paris.")
    assert set(answer) >= {"answer", "start", "end", "score"}


def test_cli_merge_roberta_head_loads_in_the_text_classification_pipeline(tiny_model_dir, tmp_path) -> None:
    from transformers import pipeline

    model, adapter = save_adapter(tiny_model_dir, tmp_path, "roberta_head")
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")]) == 0
    classifier = pipeline("text-classification", model=str(tmp_path / "merged"), top_k=None)
    scores = classifier(["The movie was a great and moving experience."])[0]
    assert sorted(s["label"] for s in scores) == ["a", "b", "c"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    encoded = tokenizer("The movie was a great and moving experience.", return_tensors="pt")
    probabilities = outputs(model, encoded["input_ids"], encoded["attention_mask"])[0].softmax(-1)[0]
    by_label = {s["label"]: s["score"] for s in scores}
    torch.testing.assert_close(torch.tensor([by_label[x] for x in "abc"]), probabilities, atol=1e-5, rtol=0)


def test_cli_merge_light_head_writes_an_encoder_and_a_head(tiny_model_dir, tmp_path) -> None:
    model, adapter = save_adapter(tiny_model_dir, tmp_path, "light_head")
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(out)]) == 0
    assert {"config.json", "model.safetensors", "light_head.safetensors", MERGE_INFO_NAME} <= {p.name for p in out.iterdir()}
    encoder = RobertaModel.from_pretrained(out, add_pooling_layer=False)  # transformers loads the encoder alone
    assert encoder.config.hidden_size == 32
    merged = load_merged(out)
    assert type(merged) is MergedLightClassifier
    ids, mask = batch()
    torch.testing.assert_close(standalone_outputs(merged, ids, mask)[0], outputs(model, ids, mask)[0], atol=1e-5, rtol=0)


def test_cli_merge_refuses_a_non_empty_output_and_overwrites_on_request(tiny_model_dir, tmp_path, capsys) -> None:
    _, adapter = save_adapter(tiny_model_dir, tmp_path, "light_head")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    for flags in ([], ["--overwrite"]):  # a folder that is not a merged checkpoint is never written into
        assert main(["merge", "--adapter", str(adapter), "--output", str(notes), *flags]) == 2
        assert ("not empty" if not flags else "not an earlier merged checkpoint") in capsys.readouterr().err
    assert [p.name for p in notes.iterdir()] == ["notes.txt"]
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(out)]) == 0
    (out / "notes.txt").write_text("keep me")
    assert main(["merge", "--adapter", str(adapter), "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["merge", "--adapter", str(adapter), "--output", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "light_head.safetensors").is_file()
    assert main(["merge", "--adapter", str(adapter), "--output", str(adapter), "--overwrite"]) == 2
    assert "which the merged checkpoint is made from" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # no temporary folders left


# ----------------------------------------------------------------------------- combining adapters
def two_adapters(tiny_model_dir, tmp_path, second: dict | None = None) -> AdapterBank:
    bank = AdapterBank(trained_model(tiny_model_dir, seed=4, lora_rank=4, lora_alpha=8))
    trained_model(tiny_model_dir, seed=5, **(second or {"lora_rank": 2, "lora_alpha": 6})).save_adapter(tmp_path / "b")
    bank.load_adapter(tmp_path / "b", "b")
    return bank


def deltas(bank, name: str) -> dict[str, torch.Tensor]:
    bank.set_adapter(name)
    return {path: layer.delta_weight() for path, layer in lora_layers(bank.model.roberta).items()}


def test_cat_combination_equals_the_weighted_sum_of_deltas(tiny_model_dir, tmp_path, caplog) -> None:
    model = two_adapters(tiny_model_dir, tmp_path)
    with caplog.at_level(logging.WARNING):
        config = model.add_weighted_adapter(["default", "b"], [0.7, -1.3], "mix", combination_type="cat")
    assert "takes biases, LayerNorms and the head" in caplog.text and "'default'" in caplog.text
    assert config.lora_rank == 6 and config.lora_alpha == 6
    first, second, combined = deltas(model, "default"), deltas(model, "b"), deltas(model, "mix")
    for path, delta in combined.items():
        torch.testing.assert_close(delta, 0.7 * first[path] - 1.3 * second[path], atol=1e-6, rtol=1e-5)
    model.set_adapter("mix")  # biases, LayerNorms and head are the first adapter's
    mix = model.model.adapter_state_dict()
    model.set_adapter("default")
    assert all(torch.equal(mix[n], t) for n, t in model.model.adapter_state_dict().items() if ".lora_" not in n)


def test_svd_combination_is_exact_at_full_rank_and_optimal_below(tiny_model_dir, tmp_path) -> None:
    model = two_adapters(tiny_model_dir, tmp_path)
    model.add_weighted_adapter(["default", "b"], [0.5, 2.0], "full", combination_type="svd", svd_rank=6)
    model.add_weighted_adapter(["default", "b"], [0.5, 2.0], "low", combination_type="svd", svd_rank=3)
    first, second = deltas(model, "default"), deltas(model, "b")
    full, low = deltas(model, "full"), deltas(model, "low")
    for path in first:
        target = 0.5 * first[path] + 2.0 * second[path]
        torch.testing.assert_close(full[path], target, atol=1e-5, rtol=1e-4)
        # Eckart-Young: the rank-3 residual is exactly the discarded singular values.
        tail = torch.linalg.svdvals(target)[3:]
        torch.testing.assert_close(torch.linalg.norm(target - low[path]), tail.norm(), atol=1e-5, rtol=1e-4)


def test_linear_combination_needs_equal_ranks_and_matches_its_formula(tiny_model_dir, tmp_path) -> None:
    model = two_adapters(tiny_model_dir, tmp_path)
    with pytest.raises(ConfigError, match="'linear' needs equal ranks, got \\[4, 2\\]"):
        model.add_weighted_adapter(["default", "b"], [0.5, 0.5], "lin", combination_type="linear")
    a1, b1, a2, b2 = torch.randn(4, 32), torch.randn(32, 4), torch.randn(4, 32), torch.randn(32, 4)
    a, b = combine_lora_factors([(a1, b1), (a2, b2)], [0.25, 1.0], [2.0, 0.5], "linear")
    r1, r2 = 0.5 ** 0.5, 0.5 ** 0.5  # sqrt(w * s)
    torch.testing.assert_close(b @ a, (r1 * b1 + r2 * b2) @ (r1 * a1 + r2 * a2))
    with pytest.raises(ConfigError, match="must be >= 0"):
        model.add_weighted_adapter(["default", "default"], [1.0, -1.0], "neg", combination_type="linear")


def test_heads_are_averaged_only_on_request_and_when_shapes_match(tiny_model_dir, tmp_path) -> None:
    model = two_adapters(tiny_model_dir, tmp_path)
    model.add_weighted_adapter(["default", "b"], [1.0, 3.0], "avg", combination_type="cat", average_non_lora=True)
    parts = {}
    for name in ("default", "b", "avg"):
        model.set_adapter(name)
        parts[name] = model.model.classifier.out_proj.weight.detach().clone()
    torch.testing.assert_close(parts["avg"], 0.25 * parts["default"] + 0.75 * parts["b"])

    other = two_adapters(tiny_model_dir, tmp_path / "other", {"num_classes": 3, "head": "roberta", "lora_rank": 4})
    with pytest.raises(ConfigError, match="cannot average.*hold different tensors"):
        other.add_weighted_adapter(["default", "b"], [0.5, 0.5], "avg", combination_type="linear", average_non_lora=True)
    other.add_weighted_adapter(["default", "b"], [0.5, 0.5], "first", combination_type="linear")
    other.set_adapter("first")
    assert other.adapter_config.num_classes == 2 and other.adapter_config.head == "light"


def test_combining_different_targets_is_refused(tiny_model_dir, tmp_path) -> None:
    model = two_adapters(tiny_model_dir, tmp_path, {"targets": "all-linear"})
    with pytest.raises(ConfigError, match="adapts .*'query', 'key', 'value'.*'query', 'value'"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "x", combination_type="cat")

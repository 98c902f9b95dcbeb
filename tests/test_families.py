"""Every supported encoder family (RoBERTa, XLM-R, CamemBERT, BERT, DistilBERT) works like RoBERTa:
loaded with its own transformers class, LoRA on the right modules, training, files, merging,
several adapters, combinations and PEFT, all on tiny checkpoints built offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_multi_adapter import trained_model
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    BertModel,
    CamembertForSequenceClassification,
    CamembertModel,
    DistilBertForQuestionAnswering,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from roberta_lora.adapters.bank import AdapterBank
from roberta_lora.adapters.merge import export_merged, load_merged
from roberta_lora.adapters.mixed import MultiAdapterPredictor
from roberta_lora.adapters.warm_start import warm_start_from_adapter
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.lora.attention import (
    LoraBertSelfAttention,
    LoraCamembertSelfAttention,
    LoraDistilBertSelfAttention,
    LoraRobertaSelfAttention,
    LoraXLMRobertaSelfAttention,
)
from roberta_lora.lora.injection import lora_layers
from roberta_lora.lora.targets import MODEL_TYPES
from roberta_lora.model.config import CONFIG_NAME
from roberta_lora.model.standalone import MergedClassifier
from roberta_lora.model.toy import make_toy_encoder, toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta

FAMILIES = ("roberta", "xlm-roberta", "camembert", "bert", "distilbert")
ENCODERS = {"roberta": RobertaModel, "xlm-roberta": XLMRobertaModel, "camembert": CamembertModel,
            "bert": BertModel, "distilbert": DistilBertModel}
# What merge_and_unload gives for a GLUE adapter with the "roberta" head (DistilBERT's own classifier is ReLU).
SEQUENCE_CLASSIFIERS = {"roberta": RobertaForSequenceClassification, "xlm-roberta": XLMRobertaForSequenceClassification,
                        "camembert": CamembertForSequenceClassification, "bert": BertForSequenceClassification,
                        "distilbert": MergedClassifier}
# Written out by hand (not read from lora.targets), so a wrong table cannot agree with itself.
LAYER = {"distilbert": "transformer.layer.{i}."}
PATHS = {
    "bert-like": {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                  "attention_output": "attention.output.dense", "intermediate": "intermediate.dense",
                  "output": "output.dense"},
    "distilbert": {"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
                   "attention_output": "attention.out_lin", "intermediate": "ffn.lin1", "output": "ffn.lin2"},
}
TEXTS = (["the movie was great", "a boring film with bad acting", "who wrote the book?"],
         ["is it?", "the cat sat on the mat", "the author wrote it in paris"])


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint (hidden 32, 2 layers, 4 heads) with its tokenizer, per family."""
    root = tmp_path_factory.mktemp("families")
    return {family: make_toy_encoder(root / family, family, seed=1) for family in FAMILIES}


def inputs(base: Path) -> dict[str, torch.Tensor]:
    """Sentence pairs as the base's tokenizer encodes them (token_type_ids for BERT), one row padded."""
    return dict(AutoTokenizer.from_pretrained(base)(*TEXTS, padding=True, return_tensors="pt"))


trained = trained_model  # (base, seed, **kwargs): a model whose adapter tensors moved as after training


def logits(model, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    return [out.logits] if "logits" in out else [out.start_logits, out.end_logits]


def assert_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-5) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- the base
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_with_its_own_class_and_equals_it_at_init(bases, family) -> None:
    model = LoraWrapperRoberta(model_id=str(bases[family]), lora_rank=4, seed=0).eval()  # LoRA B = 0
    assert type(model.roberta) is ENCODERS[family] and model.adapter_config.model_type == family
    assert getattr(model.roberta, "pooler", None) is None
    reference = ENCODERS[family].from_pretrained(bases[family], **({} if family == "distilbert" else
                                                                     {"add_pooling_layer": False})).eval()
    batch = inputs(bases[family])
    assert ("token_type_ids" in batch) == (family == "bert")  # pairs: segments 0 and 1 for BERT
    with torch.no_grad():
        ours = model.roberta(**batch).last_hidden_state
        theirs = reference(**batch).last_hidden_state
    assert torch.equal(ours, theirs)
    if family in ("xlm-roberta", "camembert"):  # the same architecture as RoBERTa, bit for bit
        as_roberta = RobertaModel.from_pretrained(bases[family], add_pooling_layer=False).eval()
        with torch.no_grad():
            assert torch.equal(as_roberta(**batch).last_hidden_state, theirs)


def test_bert_segments_reach_the_encoder_and_roberta_style_families_ignore_them(bases) -> None:
    for family, used in (("bert", True), ("roberta", False), ("distilbert", False)):
        model = trained(bases[family], seed=1)
        batch = inputs(bases[family])
        batch.setdefault("token_type_ids", torch.zeros_like(batch["input_ids"]))
        flipped = {**batch, "token_type_ids": 1 - batch["token_type_ids"]}
        assert torch.equal(logits(model, batch)[0], logits(model, flipped)[0]) != used, family


def test_an_unsupported_model_type_is_refused_listing_the_supported_ones(tmp_path) -> None:
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=4, n_positions=64)
    with pytest.raises(ConfigError, match="'gpt2'") as error:
        LoraWrapperRoberta(model_id=config)
    assert all(name in str(error.value) for name in MODEL_TYPES)
    GPT2Model(config).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="'gpt2'.*'distilbert'"):
        LoraWrapperRoberta(model_id=str(tmp_path / "gpt2"))
    with pytest.raises(ConfigError, match="bare encoder"):
        LoraWrapperRoberta(model_id=BertForSequenceClassification(toy_config(100, family="bert")))


# ----------------------------------------------------------------------------- LoRA and training
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("targets", ["query,value", "all-linear"])
def test_lora_lands_on_the_named_modules_and_never_on_a_head(family, targets) -> None:
    model = LoraWrapperRoberta(model_id=toy_config(100, family=family), targets=targets, head="roberta", seed=0)
    names = ["query", "value"] if targets == "query,value" else list(PATHS["bert-like"])
    layer = LAYER.get(family, "encoder.layer.{i}.")
    paths = PATHS.get(family, PATHS["bert-like"])
    expected = {layer.format(i=i) + paths[name] for i in range(2) for name in names}
    assert set(model.replaced_modules) == expected
    assert set(lora_layers(model.roberta)) == expected
    assert not lora_layers(model.head_module)
    attention = {"roberta": LoraRobertaSelfAttention, "xlm-roberta": LoraXLMRobertaSelfAttention,
                 "camembert": LoraCamembertSelfAttention, "bert": LoraBertSelfAttention,
                 "distilbert": LoraDistilBertSelfAttention}[family]
    assert type(model.roberta.get_submodule(layer.format(i=0) + paths["query"].rpartition(".")[0])) is attention


@pytest.mark.parametrize("family", FAMILIES)
def test_only_adapter_tensors_get_gradients_and_the_shared_branch_is_used(bases, family) -> None:
    model = LoraWrapperRoberta(model_id=str(bases[family]), head="roberta", targets="all-linear", lora_rank=4,
                               seed=0, lora_dropout=0.1)
    batch = inputs(bases[family])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    loss = model(**batch, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= set(model.adapter_state_dict())
    assert any(".lora_B." in n for n in with_grad) and any(n.startswith("classifier.") for n in with_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if n in before)
    attention = next(m for m in model.roberta.modules() if hasattr(m, "shared_lora_layers"))
    assert len(attention.shared_lora_layers()) == 3  # query, key and value share one A matmul


# ----------------------------------------------------------------------------- files, merging, standalone models
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["roberta_head", "light_head", "squad"])
def test_save_load_merge_and_standalone_model(bases, tmp_path, family, kind) -> None:
    kwargs = {"squad": {"task_type": "squad_v2"}, "light_head": {"num_classes": 3},
              "roberta_head": {"num_classes": 3, "head": "roberta", "targets": "all-linear"}}[kind]
    model = trained(bases[family], seed=2, **kwargs)
    batch = inputs(bases[family])
    reference = logits(model, batch)

    model.save_adapter(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())["model_type"] == family
    assert_equal(logits(LoraWrapperRoberta.from_adapter(tmp_path / "adapter"), batch), reference)

    model.merge_adapter()
    assert_close(logits(model, batch), reference)
    model.unmerge_adapter()
    assert_equal(logits(model, batch), reference)

    standalone = model.merge_and_unload().eval()
    expected = {"squad": ENCODERS[family].__name__.replace("Model", "ForQuestionAnswering"),
                "light_head": "MergedClassifier", "roberta_head": SEQUENCE_CLASSIFIERS[family].__name__}[kind]
    assert type(standalone).__name__ == expected
    assert_close(logits(standalone, batch), reference)
    if family in ("bert", "distilbert"):  # and through the folder `roberta-lora merge` writes
        export_merged(model, tmp_path / "merged", tokenizer_source=bases[family])
        assert_close(logits(load_merged(tmp_path / "merged"), batch), reference)


def test_bert_roberta_head_is_the_pooler_plus_the_classifier(bases) -> None:
    model = trained(bases["bert"], seed=3, num_classes=2, head="roberta")
    standalone = model.merge_and_unload()
    assert isinstance(standalone, BertForSequenceClassification)
    assert torch.equal(standalone.bert.pooler.dense.weight, model.head_module.dense.weight)
    assert torch.equal(standalone.classifier.weight, model.head_module.out_proj.weight)
    distil = trained(bases["distilbert"], seed=3, task_type="squad_v1").merge_and_unload()
    assert isinstance(distil, DistilBertForQuestionAnswering)


# ----------------------------------------------------------------------------- several adapters
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_a_bank_of_adapters_switches_exactly_and_answers_mixed_batches(bases, tmp_path, family) -> None:
    specs = {"a": {"num_classes": 2}, "b": {"num_classes": 3, "head": "roberta", "targets": "all-linear",
                                            "lora_rank": 4}, "qa": {"task_type": "squad_v2", "lora_rank": 2}}
    for seed, (name, kwargs) in enumerate(specs.items()):
        trained(bases[family], seed + 5, **kwargs).save_adapter(tmp_path / name)
    alone = {name: LoraWrapperRoberta.from_adapter(tmp_path / name) for name in specs}
    bank = AdapterBank.from_adapter(tmp_path / "a", "a")
    for name in ("b", "qa"):
        bank.load_adapter(tmp_path / name, name)
    batch = inputs(bases[family])
    for name in ("qa", "b", "a", "b"):
        bank.set_adapter(name)
        assert_equal(logits(bank, batch), logits(alone[name], batch))

    predictor = MultiAdapterPredictor(bank)
    results = predictor.predict(batch["input_ids"], batch["attention_mask"], ["b", "a", "b"], batch.get("token_type_ids"))
    rows = torch.tensor([0, 2])
    sub = {k: v.index_select(0, rows) for k, v in batch.items()}
    assert torch.equal(torch.stack([results[0]["logits"], results[2]["logits"]]), logits(alone["b"], sub)[0])

    config = bank.add_weighted_adapter(["a", "a"], [0.5, 0.5], "half", combination_type="cat")
    assert config.model_type == family
    bank.set_adapter("half")
    assert_close(logits(bank, batch), logits(alone["a"], batch))  # 0.5 * delta + 0.5 * delta = delta


def test_an_adapter_is_refused_on_a_base_of_another_family(bases, tmp_path) -> None:
    trained(bases["bert"], seed=4).save_adapter(tmp_path / "bert")
    trained(bases["roberta"], seed=4).save_adapter(tmp_path / "roberta")
    with pytest.raises(AdapterError, match="'bert' base.*'distilbert' model"):
        LoraWrapperRoberta.from_adapter(tmp_path / "bert", model_id=str(bases["distilbert"]), allow_base_mismatch=True)
    with pytest.raises(AdapterError, match="'roberta' base.*'xlm-roberta' model"):  # same shapes, other family
        LoraWrapperRoberta.from_adapter(tmp_path / "roberta", model_id=str(bases["xlm-roberta"]))
    bank = AdapterBank(trained(bases["roberta"], seed=5))
    with pytest.raises(AdapterError, match="'bert' base"):
        bank.load_adapter(tmp_path / "bert", "other", allow_base_mismatch=True)
    assert bank.adapters == ["default"]
    with pytest.raises(AdapterError, match="'bert' base.*'roberta' model"):  # --init-from
        warm_start_from_adapter(bank.model, tmp_path / "bert", allow_base_mismatch=True)


def test_an_adapter_file_without_model_type_is_a_roberta_adapter(bases, tmp_path) -> None:
    model = trained(bases["roberta"], seed=6)
    model.save_adapter(tmp_path / "old")
    path = tmp_path / "old" / CONFIG_NAME
    data = json.loads(path.read_text())
    del data["model_type"]  # as written before the field existed
    path.write_text(json.dumps(data))
    batch = inputs(bases["roberta"])
    loaded = LoraWrapperRoberta.from_adapter(tmp_path / "old")
    assert loaded.adapter_config.model_type == "roberta"
    assert_equal(logits(loaded, batch), logits(model, batch))


# ----------------------------------------------------------------------------- PEFT
@pytest.mark.parametrize(("family", "kwargs"), [
    ("bert", {"num_classes": 3, "head": "roberta", "targets": "all-linear", "train_embeddings": True}),
    ("distilbert", {"task_type": "squad_v2", "targets": "all-linear"}),
    ("xlm-roberta", {"num_classes": 2, "head": "roberta"}),
])
def test_peft_export_and_import_round_trip(bases, tmp_path, family, kwargs) -> None:
    peft = pytest.importorskip("peft")
    from roberta_lora.adapters.peft import export_peft, import_peft

    ours = trained(bases[family], seed=7, **kwargs)
    ours.save_adapter(tmp_path / "ours")
    summary = export_peft(tmp_path / "ours", tmp_path / "peft")
    name = summary["transformers_class"]
    assert name.lower().startswith(family.replace("-", ""))
    import transformers

    cls = getattr(transformers, name)
    base = cls.from_pretrained(bases[family], **({"num_labels": 3 if family == "bert" else 2}
                                                  if "Sequence" in name else {}))
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    batch = inputs(bases[family])
    assert_close(logits(theirs, batch), logits(ours, batch))

    back = import_peft(tmp_path / "peft", task_type=ours.adapter_config.task_type)
    assert back.adapter_config.model_type == family
    assert_equal(logits(back, batch), logits(ours, batch))


def test_a_peft_bert_classifier_without_its_pooler_imports_with_the_base_pooler(bases, tmp_path) -> None:
    peft = pytest.importorskip("peft")
    from roberta_lora.adapters.peft import import_peft

    torch.manual_seed(0)
    BertModel(BertModel.config_class.from_pretrained(bases["bert"])).save_pretrained(tmp_path / "bert")  # with a pooler
    base = BertForSequenceClassification.from_pretrained(tmp_path / "bert", num_labels=2)
    theirs = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    with torch.no_grad():
        for parameter in theirs.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(9)) * 0.1)
    theirs.save_pretrained(tmp_path / "peft")
    assert not any("pooler" in k for k in json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
                   .get("modules_to_save") or [])
    ours = import_peft(tmp_path / "peft", model_id=str(tmp_path / "bert"))
    batch = inputs(bases["bert"])
    assert_close(logits(ours, batch), logits(theirs.eval(), batch))
    with pytest.raises(AdapterError, match="pooler"):  # a base without one: refused, never a random pooler
        import_peft(tmp_path / "peft", model_id=str(bases["bert"]))


def test_peft_export_of_a_distilbert_roberta_head_is_refused_with_the_reason(bases, tmp_path) -> None:
    from roberta_lora.adapters.peft import export_peft

    trained(bases["distilbert"], seed=8, head="roberta").save_adapter(tmp_path / "ours")
    with pytest.raises(AdapterError, match="ReLU.*merge"):
        export_peft(tmp_path / "ours", tmp_path / "peft")

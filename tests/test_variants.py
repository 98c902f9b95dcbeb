"""LoRA variants (rsLoRA, DoRA, gaussian / orthogonal / PiSSA / OLoRA inits, layers_to_transform): one home of the maths (`lora.variants`),
exact against real PEFT both ways, and the same in every path that computes an adapter."""

from __future__ import annotations

import json

import pytest
import torch
from test_multi_adapter import batch, outputs, trained_model
from transformers import RobertaConfig, RobertaForSequenceClassification

from roberta_lora.adapters.peft import export_peft, import_peft
from roberta_lora.cli.main import main
from roberta_lora.errors import ConfigError
from roberta_lora.lora.injection import lora_layers
from roberta_lora.lora.layer import LoraLinear
from roberta_lora.model.wrapper import LoraWrapperRoberta

from fixtures_glue import write_glue_fixture

peft = pytest.importorskip("peft")

VARIANTS = {
    "rslora": {"use_rslora": True, "lora_rank": 4, "lora_alpha": 8},
    "dora": {"use_dora": True},
    "dora-rslora-all-linear": {"use_dora": True, "use_rslora": True, "targets": "all-linear", "lora_rank": 4},
    "gaussian": {"init_lora_weights": "gaussian"},
    "orthogonal": {"init_lora_weights": "orthogonal", "lora_rank": 4},
    "layers": {"layers_to_transform": [1], "targets": "all-linear"},
    "dora-no-biases": {"use_dora": True, "train_biases": False, "train_layer_norms": False},
}
HEAD = {"num_classes": 3, "head": "roberta"}


def peft_logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_exports_to_peft_with_equal_logits_and_imports_back_exactly(tiny_model_dir, tmp_path, name) -> None:
    ours = trained_model(tiny_model_dir, seed=7, **HEAD, **VARIANTS[name])
    ours.save_adapter(tmp_path / "ours")
    export_peft(tmp_path / "ours", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["use_dora"] == ours.adapter_config.use_dora and config["use_rslora"] == ours.adapter_config.use_rslora
    base = RobertaForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    ids, mask = batch()
    (mine,) = outputs(ours, ids, mask)
    torch.testing.assert_close(peft_logits(theirs, ids, mask), mine, atol=1e-5, rtol=0)
    back = import_peft(tmp_path / "peft", model_id=str(tiny_model_dir))
    for field in ("use_dora", "use_rslora", "layers_to_transform", "init_lora_weights", "lora_alpha", "lora_rank"):
        assert getattr(back.adapter_config, field) == getattr(ours.adapter_config, field), field
    assert torch.equal(outputs(back, ids, mask)[0], mine)


@pytest.mark.parametrize("name", ["rslora", "dora", "gaussian", "orthogonal", "layers"])
def test_an_adapter_peft_trained_with_the_variant_imports_exactly(tiny_model_dir, tmp_path, name) -> None:
    options = {"rslora": {"use_rslora": True, "r": 4, "lora_alpha": 8}, "dora": {"use_dora": True},
               "gaussian": {"init_lora_weights": "gaussian"}, "orthogonal": {"init_lora_weights": "orthogonal"},
               "layers": {"layers_to_transform": [0], "layers_pattern": "layer"}}[name]
    base = RobertaForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    theirs = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", **{"r": 2, **options},
                                                       target_modules=["query", "value"], bias="all"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in theirs.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    theirs.save_pretrained(tmp_path / "peft")
    ours = import_peft(tmp_path / "peft", model_id=str(tiny_model_dir))
    ids, mask = batch()
    torch.testing.assert_close(outputs(ours, ids, mask)[0], peft_logits(theirs.eval(), ids, mask), atol=1e-5, rtol=0)
    if name == "layers":
        assert ours.adapter_config.layers_to_transform == [0]
        assert all(".layer.0." in path for path in ours.replaced_modules)


def test_rslora_scales_by_the_square_root_of_the_rank() -> None:
    base = torch.nn.Linear(6, 5)
    plain, rs = (LoraLinear(base, 4, 8.0, use_rslora=flag) for flag in (False, True))
    assert plain.scaling == 2.0 and rs.scaling == 4.0


def test_dora_starts_as_the_base_and_merges_and_unmerges_exactly() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = LoraLinear(base, 2, 4.0, variant="dora")
    x = torch.randn(3, 6)
    assert torch.allclose(layer(x), base(x), atol=1e-6)  # m = ||W||, B = 0
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.lora_magnitude_vector.mul_(1.5)
    before = base.weight.detach().clone()
    expected = layer(x)
    layer.merge()
    torch.testing.assert_close(base(x), expected, atol=1e-5, rtol=0)
    layer.unmerge()
    assert torch.equal(base.weight, before)
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)


def test_dora_magnitude_trains_and_its_norm_is_a_constant_in_backward() -> None:
    torch.manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(6, 5), 2, 4.0, variant="dora")
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    layer(torch.randn(3, 6)).sum().backward()
    assert layer.lora_magnitude_vector.grad is not None and layer.lora_B.weight.grad is not None


def test_gaussian_init_draws_a_with_std_one_over_r() -> None:
    model = LoraWrapperRoberta(model_id=RobertaConfig(vocab_size=50, hidden_size=256, num_hidden_layers=1,
                                                      num_attention_heads=4, intermediate_size=32), lora_rank=8,
                               init_lora_weights="gaussian", seed=0)
    layer = next(iter(lora_layers(model.roberta).values()))
    assert abs(layer.lora_A.weight.std().item() - 1 / 8) < 0.01
    assert torch.count_nonzero(layer.lora_B.weight) == 0


def test_orthogonal_init_is_peft_s_with_both_factors_non_zero_and_the_update_zero() -> None:
    torch.manual_seed(5)
    ours = LoraLinear(torch.nn.Linear(24, 40), rank=6, alpha=12, init="orthogonal")
    torch.manual_seed(5)  # the same draws in the same order: the base Linear, then the two factor Linears, then the init
    theirs = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(24, 40)),
                                 peft.LoraConfig(r=6, lora_alpha=12, target_modules=["0"], init_lora_weights="orthogonal"))
    layer = theirs.base_model.model[0]
    assert torch.equal(ours.lora_A.weight, layer.lora_A["default"].weight)
    assert torch.equal(ours.lora_B.weight, layer.lora_B["default"].weight)
    assert ours.lora_A.weight.abs().min() > 0 and ours.lora_B.weight.abs().min() > 0
    assert (ours.lora_B.weight @ ours.lora_A.weight).abs().max() < 1e-7
    x = torch.randn(3, 24)
    torch.testing.assert_close(ours(x), ours.base_layer(x), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="even lora_rank, got 3"):
        LoraLinear(torch.nn.Linear(24, 40), rank=3, alpha=6, init="orthogonal")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"init_lora_weights": "pissa_nope"}, "init_lora_weights"),
    ({"init_lora_weights": 3}, "init_lora_weights"),
    ({"use_dora": "yes"}, "use_dora"),
    ({"use_rslora": 1}, "use_rslora"),
    ({"layers_to_transform": [0, 0]}, "layers_to_transform"),
    ({"layers_to_transform": []}, "layers_to_transform"),
    ({"layers_to_transform": [-1]}, "layers_to_transform"),
    ({"layers_to_transform": ["1"]}, "layers_to_transform"),
    ({"layers_to_transform": [True]}, "layers_to_transform"),
    ({"layers_to_transform": [7]}, "layers_to_transform"),
    ({"use_dora": True, "method": "head"}, "use_dora"),
    ({"init_lora_weights": "orthogonal", "lora_rank": 3}, "multiple of 2"),
])
def test_bad_variant_arguments_are_one_clear_error(tiny_model_dir, kwargs, expected) -> None:
    with pytest.raises(ConfigError, match=expected):
        LoraWrapperRoberta(model_id=str(tiny_model_dir), **kwargs)


# ----------------------------------------------------------------------------- every path: mixed batches, combinations
MIXED = {
    "plain": {"num_classes": 2},
    "dora": {"num_classes": 3, "head": "roberta", "use_dora": True, "targets": "all-linear", "lora_rank": 4},
    "rslora": {"num_classes": 2, "use_rslora": True, "lora_rank": 4, "lora_alpha": 16},
    "dora-rslora-layer": {"task_type": "squad_v2", "use_dora": True, "use_rslora": True, "layers_to_transform": [1]},
    "dora-r2": {"num_classes": 1, "use_dora": True, "lora_rank": 2, "train_biases": False},
    "orthogonal": {"num_classes": 2, "init_lora_weights": "orthogonal", "lora_rank": 4},
}


@pytest.fixture(scope="module")
def mixed(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    for seed, (name, kwargs) in enumerate(MIXED.items()):
        trained_model(tiny_model_dir, seed + 20, **kwargs).save_adapter(root / name)
    return {name: root / name for name in MIXED}


def test_a_mixed_batch_of_variants_equals_each_adapter_alone(mixed) -> None:
    from test_batched import assert_rows_match, padded_batch

    from roberta_lora.adapters.batched import BatchedAdapters

    alone = {name: LoraWrapperRoberta.from_adapter(d) for name, d in mixed.items()}
    engine = BatchedAdapters(alone["plain"])
    for name, directory in mixed.items():
        engine.add(name, directory)
    names = [n for n in MIXED for _ in range(2)][::-1]
    ids, mask = padded_batch(len(names))
    assert_rows_match(engine.forward(ids, mask, names), names, alone, ids, mask)
    assert_rows_match(engine.forward(ids[:3], mask[:3], ["plain"] * 3), ["plain"] * 3, alone, ids[:3], mask[:3])
    engine.remove("dora")
    rest = ["dora-r2", "plain", "dora-rslora-layer"]
    assert_rows_match(engine.forward(ids[:3], mask[:3], rest), rest, alone, ids[:3], mask[:3])


def test_combinations_use_each_adapters_scaling_and_refuse_dora(mixed, tiny_model_dir, tmp_path) -> None:
    from roberta_lora.adapters.bank import AdapterBank

    plain_rs = trained_model(tiny_model_dir, seed=4, num_classes=2, use_rslora=True, lora_rank=4, lora_alpha=16)
    plain_rs.save_adapter(tmp_path / "rs")
    bank = AdapterBank.from_adapter(tmp_path / "rs", "rs")
    bank.add_weighted_adapter(["rs"], [1.0], "same", combination_type="cat")
    bank.set_adapter("same")
    ids, mask = batch()
    torch.testing.assert_close(outputs(bank.model, ids, mask)[0], outputs(plain_rs, ids, mask)[0], atol=1e-5, rtol=0)
    bank.load_adapter(mixed["dora"], "dora")
    with pytest.raises(ConfigError, match="'dora' adapter"):
        bank.add_weighted_adapter(["dora", "dora"], [0.5, 0.5], "half", combination_type="cat")


def test_merged_dora_and_rslora_checkpoints_equal_the_adapter(mixed, tmp_path) -> None:
    from roberta_lora.adapters.merge import export_merged, load_merged

    for name in ("dora", "rslora", "dora-rslora-layer"):
        model = LoraWrapperRoberta.from_adapter(mixed[name])
        ids, mask = batch()
        expected = outputs(model, ids, mask)
        export_merged(model, tmp_path / name)
        merged = load_merged(tmp_path / name).eval()
        with torch.no_grad():
            out = merged(input_ids=ids, attention_mask=mask)
        got = [out.logits] if "logits" in out else [out.start_logits, out.end_logits]
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_init_from_an_adapter_of_another_variant_is_refused(mixed, tiny_model_dir) -> None:
    from roberta_lora.adapters.warm_start import warm_start_from_adapter
    from roberta_lora.errors import AdapterError

    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), num_classes=3, head="roberta", targets="all-linear",
                               lora_rank=4)
    with pytest.raises(AdapterError, match="--use-dora"):
        warm_start_from_adapter(model, mixed["dora"])


# ----------------------------------------------------------------------------- training: the CLI and LoRA+
def test_train_from_the_cli_with_an_olora_start_saves_rank_2r(tiny_model_dir, tmp_path) -> None:
    write_glue_fixture(tmp_path / "glue", "sst2", n_train=32, n_dev=16)
    run = tmp_path / "run"
    argv = ["train", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "glue"),
            "--output-dir", str(run), "--no-progress", "--batch-size", "8", "--init-lora-weights", "olora",
            "--rank", "2", "--cache-dir", str(tmp_path / "cache"), "--max-steps", "4", "--save-steps", "2"]
    assert main(argv) == 0
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (config["lora_rank"], config["init_lora_weights"]) == (4, "olora")
    assert main(["evaluate", "--adapter", str(run / "adapter"), "--data-dir", str(tmp_path / "glue"),
                 "--no-progress"]) == 0
    # The checkpoint holds the live rank-2 factors (a resume rebuilds the same start from the base).
    state = torch.load(run / "checkpoint" / "training_state.pt", weights_only=True)
    assert {t.shape[0] for n, t in state["tensors"].items() if n.endswith("lora_A.weight")} == {2}


@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
def test_train_from_the_cli_with_variants_saves_them_and_evaluates(tiny_model_dir, tmp_path, init) -> None:
    write_glue_fixture(tmp_path / "glue", "sst2", n_train=32, n_dev=16)
    run = tmp_path / "run"
    assert main(["train", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "glue"),
                 "--output-dir", str(run), "--no-progress", "--batch-size", "8", "--max-steps", "3",
                 "--use-dora", "--use-rslora", "--layers-to-transform", "1", "--init-lora-weights", init,
                 "--loraplus-lr-ratio", "16", "--cache-dir", str(tmp_path / "cache")]) == 0
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (config["use_dora"], config["use_rslora"], config["layers_to_transform"], config["init_lora_weights"]) == (
        True, True, [1], init)
    model = LoraWrapperRoberta.from_adapter(run / "adapter")
    assert all(".layer.1." in path for path in model.replaced_modules)
    assert main(["evaluate", "--adapter", str(run / "adapter"), "--data-dir", str(tmp_path / "glue"),
                 "--no-progress"]) == 0


def test_loraplus_gives_b_its_own_learning_rate_and_nothing_else(tiny_model_dir) -> None:
    from roberta_lora.training.optim import build_optimizer

    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), num_classes=2)
    plain = build_optimizer(model, lr=1e-3, weight_decay=0.01)
    plus = build_optimizer(model, lr=1e-3, weight_decay=0.01, loraplus_lr_ratio=16)
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {}
    for group in plus.param_groups:
        for parameter in group["params"]:
            by_lr[names[id(parameter)]] = (group["lr"], group["weight_decay"])
    assert {n for n, (lr, _) in by_lr.items() if lr == pytest.approx(16e-3)} == {
        n for n in by_lr if n.endswith("lora_B.weight")}
    assert all(lr == pytest.approx(1e-3) for n, (lr, _) in by_lr.items() if not n.endswith("lora_B.weight"))
    assert sum(len(g["params"]) for g in plain.param_groups) == len(by_lr)  # the same parameters, regrouped


# ----------------------------------------------------------------------------- PiSSA and OLoRA: starts taken from the base
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_pissa_or_olora_start_is_peft_s_and_the_layer_starts_as_the_base(tiny_model_dir, init) -> None:
    ours = LoraWrapperRoberta(model_id=str(tiny_model_dir), num_classes=2, head="roberta", init_lora_weights=init,
                              lora_rank=4, lora_alpha=8).eval()
    plain = LoraWrapperRoberta(model_id=str(tiny_model_dir), num_classes=2, head="roberta").eval()
    base = RobertaForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    theirs = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, init_lora_weights=init,
                                                       target_modules=["query", "value"]))
    path = "encoder.layer.1.attention.self.value"
    mine = lora_layers(ours.roberta)[path]
    peft_layer = theirs.base_model.model.roberta.get_submodule(path)
    torch.testing.assert_close(mine.lora_A.weight, peft_layer.lora_A["default"].weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(mine.lora_B.weight, peft_layer.lora_B["default"].weight, atol=1e-6, rtol=0)
    assert torch.equal(mine.base_layer.weight, lora_layers(plain.roberta)[path].base_layer.weight)  # base untouched
    x = torch.randn(3, mine.in_features)
    torch.testing.assert_close(mine(x), mine.base_layer(x), atol=1e-5, rtol=0)  # starts equal to the base


@pytest.mark.parametrize(("init", "rslora"), [("pissa", False), ("olora", True)])
def test_a_pissa_or_olora_adapter_saves_as_rank_2r_for_the_plain_base_and_goes_to_peft(tiny_model_dir, tmp_path,
                                                                                     init, rslora) -> None:
    from roberta_lora.adapters.bank import AdapterBank
    from roberta_lora.adapters.merge import export_merged, load_merged

    ours = trained_model(tiny_model_dir, seed=5, num_classes=3, head="roberta", init_lora_weights=init, lora_rank=4,
                         lora_alpha=8, use_rslora=rslora)
    ids, mask = batch()
    (expected,) = outputs(ours, ids, mask)
    ours.save_adapter(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert (config["lora_rank"], config["init_lora_weights"]) == (8, init)
    assert config["lora_alpha"] == pytest.approx(8 * (2 ** 0.5 if rslora else 2))
    loaded = LoraWrapperRoberta.from_adapter(tmp_path / "ours")
    torch.testing.assert_close(outputs(loaded, ids, mask)[0], expected, atol=1e-5, rtol=0)
    export_peft(tmp_path / "ours", tmp_path / "peft")
    base = RobertaForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    torch.testing.assert_close(peft_logits(theirs, ids, mask), expected, atol=1e-5, rtol=0)
    # The live model switched away and back in a bank, merged, and with the adapter off.
    bank = AdapterBank(ours)
    bank.load_adapter(tmp_path / "ours", "copy")
    bank.set_adapter("copy")
    bank.set_adapter("default")
    torch.testing.assert_close(outputs(bank.model, ids, mask)[0], expected, atol=1e-5, rtol=0)
    export_merged(bank.model, tmp_path / "merged")
    with torch.no_grad():
        merged = load_merged(tmp_path / "merged").eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_peft_pissa_or_olora_adapter_imports_exactly(tiny_model_dir, tmp_path, init) -> None:
    """PEFT saves such an adapter for its modified base (W - s B0 A0); the import recomputes the start from the
    unmodified base, as PEFT did, and subtracts it. (PEFT's own conversion for the unmodified base,
    path_initial_model_for_weight_conversion, leaves the classifier out of the file in peft 0.21.)"""
    base = RobertaForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    theirs = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, init_lora_weights=init,
                                                       target_modules=["query", "value"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in theirs.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    theirs.save_pretrained(tmp_path / "peft")
    ids, mask = batch()
    ours = import_peft(tmp_path / "peft", model_id=str(tiny_model_dir))
    assert ours.adapter_config.init_lora_weights == init
    torch.testing.assert_close(outputs(ours, ids, mask)[0], peft_logits(theirs.eval(), ids, mask), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "ours")  # and saved for the unmodified base: rank 2r
    back = LoraWrapperRoberta.from_adapter(tmp_path / "ours")
    assert back.adapter_config.lora_rank == 8
    torch.testing.assert_close(outputs(back, ids, mask)[0], peft_logits(theirs, ids, mask), atol=1e-5, rtol=0)


def test_serve_answers_variant_adapters_in_one_mixed_batch_like_the_offline_predictor(tiny_model_dir, tmp_path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from roberta_lora.evaluation.predict import Predictor
    from roberta_lora.serving.app import ServeConfig

    from serve_helpers import API, RunningServer, assert_same, example
    from serve_helpers import save_adapter as save_trained

    specs = {"dora": {"use_dora": True, "num_classes": 2, "label_names": ["neg", "pos"]},
             "rslora": {"use_rslora": True, "lora_rank": 4, "num_classes": 2, "label_names": ["neg", "pos"]},
             "pissa": {"init_lora_weights": "pissa", "lora_rank": 2, "num_classes": 2, "label_names": ["neg", "pos"]},
             "layers": {"layers_to_transform": [0], "use_dora": True, "num_classes": 2, "label_names": ["neg", "pos"]}}
    dirs = {name: save_trained(tiny_model_dir, tmp_path / name, seed, **kwargs)
            for seed, (name, kwargs) in enumerate(specs.items())}
    config = ServeConfig(model=str(tiny_model_dir), adapters={n: str(d) for n, d in dirs.items()}, engine="mixed",
                         api_key=API["Authorization"].removeprefix("Bearer "))
    inputs = [example(name, i, kind="sst2") for i in range(4) for name in specs]
    with RunningServer(config) as running, httpx.Client(base_url=running.url, timeout=30, headers=API) as client:
        response = client.post("/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    predictors = {name: Predictor(d, model_id=str(tiny_model_dir)) for name, d in dirs.items()}
    for item, got in zip(inputs, response.json()["results"], strict=True):
        assert_same(got, predictors[item["adapter"]].predict([item["text"]])[0])

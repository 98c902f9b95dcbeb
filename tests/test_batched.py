"""BatchedAdapters: a mixed-task batch in one encoder pass equals each adapter loaded alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_multi_adapter import trained_model

from roberta_lora.adapters.batched import BatchedAdapters, BatchedLinear
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.model.toy import make_toy_encoder
from roberta_lora.model.wrapper import LoraWrapperRoberta

# Different tasks, heads, ranks, targets and train_* flags on one base.
ADAPTERS = {
    "sst2": {"num_classes": 2, "label_names": ["negative", "positive"], "task": "sst2"},
    "mnli": {"num_classes": 3, "head": "roberta", "targets": "all-linear", "lora_rank": 4, "lora_alpha": 16},
    "stsb": {"num_classes": 1, "targets": "query,key", "lora_rank": 2, "train_biases": False,
             "train_layer_norms": False},
    "squad": {"task_type": "squad_v2", "targets": "attention_output,intermediate", "lora_rank": 6},
    "probe": {"num_classes": 2, "method": "head"},
}
ATOL = 1e-5


def save_adapters(base_dir: Path, root: Path, specs: dict[str, dict]) -> dict[str, Path]:
    for seed, (name, kwargs) in enumerate(specs.items()):
        trained_model(base_dir, seed + 10, **kwargs).save_adapter(root / name)
    return {name: root / name for name in specs}


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    return save_adapters(tiny_model_dir, tmp_path_factory.mktemp("batched"), ADAPTERS)


@pytest.fixture(scope="module")
def alone(adapter_dirs) -> dict[str, LoraWrapperRoberta]:
    """Each adapter loaded alone: the reference every row must equal."""
    return {name: LoraWrapperRoberta.from_adapter(d) for name, d in adapter_dirs.items()}


def engine_for(model: LoraWrapperRoberta, dirs: dict[str, Path]) -> BatchedAdapters:
    engine = BatchedAdapters(model)
    for name, directory in dirs.items():
        engine.add(name, directory)
    return engine


@pytest.fixture()
def engine(alone, adapter_dirs) -> BatchedAdapters:
    return engine_for(alone["sst2"], adapter_dirs)


def padded_batch(rows: int, length: int = 10, vocab: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, vocab, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(0, rows, 3):  # every third row is padded
        mask[row, 3 + row % 5:] = 0
    return ids, mask


def assert_rows_match(results, names, alone, ids, mask, segments=None) -> None:
    """Each row equals its adapter's single model on the same (padded) batch."""
    references = {}
    for name in set(names):
        with torch.no_grad():
            references[name] = alone[name](ids, mask, token_type_ids=segments)
    for i, name in enumerate(names):
        ref = references[name]
        expected = ({"logits": ref.logits[i]} if alone[name].task_type == "glue"
                    else {"start_logits": ref.start_logits[i], "end_logits": ref.end_logits[i]})
        assert results[i].keys() == expected.keys(), (i, name)
        for key, tensor in expected.items():
            torch.testing.assert_close(results[i][key], tensor, atol=ATOL, rtol=0, msg=f"row {i} ({name}) {key}")


def test_shuffled_mixed_batch_equals_each_adapter_alone(engine, alone):
    names = list(ADAPTERS) * 3
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(0)).tolist()
    names = [names[i] for i in order]
    ids, mask = padded_batch(len(names))
    results = engine.forward(ids, mask, names)
    assert len(results) == len(names)
    assert results[names.index("mnli")]["logits"].shape == (3,)
    assert results[names.index("squad")]["start_logits"].shape == (ids.size(1),)
    assert_rows_match(results, names, alone, ids, mask)


def test_batch_of_one_adapter_and_no_mask(engine, alone):
    ids, mask = padded_batch(4)
    assert_rows_match(engine.forward(ids, mask, ["mnli"] * 4), ["mnli"] * 4, alone, ids, mask)
    full = torch.ones_like(ids)
    assert_rows_match(engine.forward(ids, None, ["stsb"] * 4), ["stsb"] * 4, alone, ids, full)


def test_the_model_is_not_modified(alone, adapter_dirs):
    model = alone["sst2"]
    before = {n: t.clone() for n, t in model.state_dict().items()}
    engine = engine_for(model, adapter_dirs)
    engine.forward(*padded_batch(2), ["sst2", "squad"])
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)


def test_the_base_matmul_runs_once_per_layer_for_the_whole_batch(engine, monkeypatch):
    names = ["sst2", "mnli", "stsb", "squad", "probe", "mnli"]
    linears = [m for m in engine.encoder.modules() if isinstance(m, BatchedLinear)]
    base_weights = {id(m.weight) for m in linears}
    calls: dict[int, list[int]] = {}
    real_linear = F.linear

    def counting_linear(x, weight, bias=None):
        if id(weight) in base_weights:
            calls.setdefault(id(weight), []).append(x.size(0))
        return real_linear(x, weight, bias)

    monkeypatch.setattr(F, "linear", counting_linear)
    engine.forward(*padded_batch(len(names)), names)
    assert len(linears) == 2 * 6  # 2 layers x (query, key, value, attention output, intermediate, output)
    assert calls == {w: [len(names)] for w in base_weights}  # each base weight once, over every row


def test_remove_then_the_name_is_unknown(engine, alone, adapter_dirs):
    held = engine.nbytes("squad")
    engine.remove("squad")  # the only rank-6 adapter: its rank tables go
    assert engine.names == ["sst2", "mnli", "stsb", "probe"]
    with pytest.raises(ConfigError, match=r"'squad'.*\['sst2', 'mnli', 'stsb', 'probe'\]"):
        engine.forward(*padded_batch(1), ["squad"])
    with pytest.raises(ConfigError, match="squad"):
        engine.nbytes("squad")
    names = ["probe", "stsb", "mnli", "sst2"]
    ids, mask = padded_batch(4)
    assert_rows_match(engine.forward(ids, mask, names), names, alone, ids, mask)
    engine.add("squad", adapter_dirs["squad"])  # added again: the same rows come back
    assert engine.nbytes("squad") == held
    names = ["squad", "mnli", "squad"]
    ids, mask = padded_batch(3)
    assert_rows_match(engine.forward(ids, mask, names), names, alone, ids, mask)


def test_bad_names_and_batch_sizes(engine):
    ids, mask = padded_batch(3)
    with pytest.raises(ConfigError, match=r"'nope'.*loaded adapters: \['sst2'"):
        engine.forward(ids, mask, ["sst2", "nope", "sst2"])
    with pytest.raises(ConfigError, match="2 adapter names for a batch of 3 rows"):
        engine.forward(ids, mask, ["sst2", "mnli"])
    with pytest.raises(ConfigError, match="a string"):
        engine.forward(ids[:4], mask[:4], "sst")
    with pytest.raises(ConfigError, match="already loaded"):
        engine.add_tensors("sst2", engine.config("sst2"), {})


def test_full_and_embedding_adapters_are_refused(tiny_model_dir, tmp_path, engine):
    specs = {"full": {"method": "full"}, "emb": {"train_embeddings": True}}
    dirs = save_adapters(tiny_model_dir, tmp_path, specs)
    with pytest.raises(ConfigError, match="'full' adapter"):
        engine.add("full", dirs["full"])
    with pytest.raises(ConfigError, match="train_embeddings=True"):
        engine.add("emb", dirs["emb"])
    assert "full" not in engine.names and "emb" not in engine.names


def test_add_tensors_from_memory(alone):
    model = alone["mnli"]
    engine = BatchedAdapters(model)
    engine.add_tensors("mem", model.adapter_config, model.adapter_state_dict())
    ids, mask = padded_batch(2)
    assert_rows_match(engine.forward(ids, mask, ["mem", "mem"]), ["mnli", "mnli"], alone, ids, mask)
    with pytest.raises(AdapterError, match="does not fit"):
        engine.add_tensors("bad", alone["sst2"].adapter_config, model.adapter_state_dict())


def test_concurrent_forwards_do_not_mix(engine, alone):
    ids, mask = padded_batch(3)
    results: dict[str, list] = {}

    def run(name: str) -> None:
        results[name] = [engine.forward(ids, mask, [name] * 3) for _ in range(5)]

    threads = [threading.Thread(target=run, args=(name,)) for name in ("sst2", "squad")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, runs in results.items():
        for result in runs:
            assert_rows_match(result, [name] * 3, alone, ids, mask)
    with pytest.raises(RuntimeError, match="outside BatchedAdapters.forward"):
        engine.encoder(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_other_families(family, tmp_path):
    base = make_toy_encoder(tmp_path / family, family)
    specs = {"pairs": {"num_classes": 3, "targets": "all-linear", "lora_rank": 3},
             "span": {"task_type": "squad_v1", "lora_rank": 5, "train_layer_norms": False}}
    dirs = save_adapters(base, tmp_path, specs)
    alone = {name: LoraWrapperRoberta.from_adapter(d) for name, d in dirs.items()}
    engine = engine_for(alone["span"], dirs)
    ids, mask = padded_batch(5, vocab=alone["span"].config.vocab_size)
    segments = torch.zeros_like(ids)
    segments[:, 4:] = 1  # a second segment: BERT's token type embeddings must reach the encoder
    names = ["span", "pairs", "pairs", "span", "pairs"]
    assert_rows_match(engine.forward(ids, mask, names, token_type_ids=segments), names, alone, ids, mask, segments)


def test_an_adapter_of_another_family_is_refused(engine, tmp_path):
    base = make_toy_encoder(tmp_path / "bert-base", "bert")
    dirs = save_adapters(base, tmp_path, {"bert": {"num_classes": 2}})
    with pytest.raises(AdapterError, match="'bert' base"):
        engine.add("bert", dirs["bert"])


# ----------------------------------------------------------------------------- adapters of different ranks
# Each adapter's factors are kept at its own rank: a batch pays for the ranks in it, and what one adapter
# holds does not depend on the others.
RANKS = {"r2": {"num_classes": 2, "lora_rank": 2, "targets": "query,value"},
         "r8": {"num_classes": 3, "lora_rank": 8, "targets": "all-linear"},
         "r32": {"task_type": "squad_v2", "lora_rank": 32, "targets": "query,key,intermediate"},
         "head": {"num_classes": 2, "method": "head"}}


@pytest.fixture(scope="module")
def rank_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    return save_adapters(tiny_model_dir, tmp_path_factory.mktemp("ranks"), RANKS)


@pytest.fixture(scope="module")
def rank_alone(rank_dirs) -> dict[str, LoraWrapperRoberta]:
    return {name: LoraWrapperRoberta.from_adapter(d) for name, d in rank_dirs.items()}


def shuffled(names: list[str], seed: int = 0) -> list[str]:
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    return [names[i] for i in order]


def expected_nbytes(model: LoraWrapperRoberta) -> int:
    """What an engine holds for `model`'s adapter, counted from the model: its LoRA factors as saved, a bias
    row for every base Linear with a bias and a weight + bias row for every LayerNorm (the base's values
    where it trains none), one int64 index entry per Linear, and its head."""
    tensors = model.adapter_state_dict()
    factors = sum(t.nbytes for n, t in tensors.items() if ".lora_A." in n or ".lora_B." in n)
    head = sum(p.nbytes for p in model.head_module.parameters())
    rows = 0
    for module in model.unload().modules():
        if isinstance(module, torch.nn.Linear):
            rows += 8 + (module.bias.nbytes if module.bias is not None else 0)
        elif isinstance(module, torch.nn.LayerNorm):
            rows += module.weight.nbytes + module.bias.nbytes
    return factors + head + rows


def test_a_batch_of_three_ranks_equals_each_adapter_alone(rank_alone, rank_dirs):
    engine = engine_for(rank_alone["r2"], rank_dirs)
    names = shuffled(list(RANKS) * 3, seed=1)
    ids, mask = padded_batch(len(names))
    assert_rows_match(engine.forward(ids, mask, names), names, rank_alone, ids, mask)
    for name in RANKS:  # and each rank on its own
        assert_rows_match(engine.forward(ids[:3], mask[:3], [name] * 3), [name] * 3, rank_alone, ids[:3], mask[:3])


def test_factors_are_kept_at_their_own_rank(rank_alone, rank_dirs):
    engine = engine_for(rank_alone["r2"], rank_dirs)
    query = engine.encoder.get_submodule("encoder.layer.0.attention.self.query")
    output = engine.encoder.get_submodule("encoder.layer.0.output.dense")  # all-linear only: r8
    assert {r: tuple(t.a.shape) for r, t in query.factors.items()} == {"2": (2, 2, 32), "8": (2, 8, 32),
                                                                       "32": (2, 32, 32)}
    assert {r: tuple(t.b.shape) for r, t in output.factors.items()} == {"8": (2, 32, 8)}


def test_a_batch_pays_only_for_its_own_ranks(rank_alone, rank_dirs, monkeypatch):
    engine = engine_for(rank_alone["r2"], rank_dirs)
    inner: list[int] = []
    real_bmm = torch.bmm

    def recording_bmm(x, y, **kwargs):
        inner.append(y.size(-1))  # x (n, T, in) @ A^T (n, in, r): the rank multiplied
        return real_bmm(x, y, **kwargs)

    monkeypatch.setattr(torch, "bmm", recording_bmm)
    engine.forward(*padded_batch(4), ["r2", "head", "r2", "r2"])
    assert inner and set(inner) == {2}  # only rank-2 factors were multiplied: no r=32 padding, no zeros
    inner.clear()
    engine.forward(*padded_batch(4), ["head"] * 4)
    assert inner == []  # a head-only adapter has no LoRA work at all


def test_nbytes_is_what_the_adapter_holds_whatever_else_is_loaded(rank_alone, rank_dirs):
    engine = BatchedAdapters(rank_alone["r2"])
    assert engine.held_bytes() == 0
    engine.add("r2", rank_dirs["r2"])
    small = engine.nbytes("r2")
    assert small == expected_nbytes(rank_alone["r2"]) == engine.held_bytes()
    engine.add("r32", rank_dirs["r32"])  # a larger rank: r2's rows are not padded to it
    assert engine.nbytes("r2") == small
    assert engine.nbytes("r32") == expected_nbytes(rank_alone["r32"])
    for name in ("r8", "head"):
        engine.add(name, rank_dirs[name])
    sizes = {name: engine.nbytes(name) for name in engine.names}
    assert sizes == {name: expected_nbytes(rank_alone[name]) for name in RANKS}
    assert engine.held_bytes() == sum(sizes.values())
    engine.remove("r32")  # the only rank-32 adapter: its tables go
    assert not any("32" in m.factors for m in engine.encoder.modules() if isinstance(m, BatchedLinear))
    assert {n: engine.nbytes(n) for n in engine.names} == {n: sizes[n] for n in ("r2", "r8", "head")}
    assert engine.held_bytes() == sizes["r2"] + sizes["r8"] + sizes["head"]
    engine.add("again", rank_dirs["r32"])
    engine.remove("r2")  # rows after a removed one move up; what each holds does not change
    assert {n: engine.nbytes(n) for n in engine.names} == {"r8": sizes["r8"], "head": sizes["head"],
                                                           "again": sizes["r32"]}
    assert engine.held_bytes() == sizes["r8"] + sizes["head"] + sizes["r32"]
    names = ["again", "r8", "head", "again"]
    ids, mask = padded_batch(4)
    assert_rows_match(engine.forward(ids, mask, names), ["r32", "r8", "head", "r32"], rank_alone, ids, mask)
    for name in list(engine.names):
        engine.remove(name)
    assert engine.held_bytes() == 0


def test_removing_one_of_several_adapters_of_a_rank_keeps_the_others_exact(rank_alone, rank_dirs):
    engine = BatchedAdapters(rank_alone["r8"])
    for name in ("a", "b", "c"):
        engine.add(name, rank_dirs["r8"] if name != "b" else rank_dirs["r2"])
    engine.add("d", rank_dirs["r8"])
    engine.remove("a")  # rank 8's first row: c and d move up in the rank-8 tables
    names = ["d", "b", "c", "d"]
    ids, mask = padded_batch(4)
    assert_rows_match(engine.forward(ids, mask, names), ["r8", "r2", "r8", "r8"], rank_alone, ids, mask)


def test_a_bfloat16_model_answers_a_mixed_batch_close_to_float32(rank_alone, rank_dirs):
    names = shuffled(list(RANKS) * 2, seed=2)
    ids, mask = padded_batch(len(names))
    full = engine_for(rank_alone["r2"], rank_dirs).forward(ids, mask, names)
    model = LoraWrapperRoberta.from_adapter(rank_dirs["r2"]).to(torch.bfloat16)
    engine = engine_for(model, rank_dirs)
    linear = engine.encoder.get_submodule("encoder.layer.1.attention.self.query")
    assert {t.a.dtype for t in linear.factors.values()} == {torch.bfloat16} and linear.biases.dtype == torch.bfloat16
    half = engine.forward(ids, mask, names)
    for ours, reference in zip(half, full, strict=True):
        for key, tensor in reference.items():
            assert ours[key].dtype == torch.bfloat16
            torch.testing.assert_close(ours[key].float(), tensor, atol=0.05, rtol=0.05)


def test_mixed_ranks_on_bert(tmp_path):
    base = make_toy_encoder(tmp_path / "bert", "bert")
    specs = {"r2": {"num_classes": 2, "lora_rank": 2}, "r16": {"num_classes": 3, "lora_rank": 16,
                                                              "targets": "all-linear"},
             "r4": {"task_type": "squad_v1", "lora_rank": 4, "targets": "value,output"}}
    dirs = save_adapters(base, tmp_path, specs)
    alone = {name: LoraWrapperRoberta.from_adapter(d) for name, d in dirs.items()}
    engine = engine_for(alone["r2"], dirs)
    names = shuffled(list(specs) * 3, seed=3)
    ids, mask = padded_batch(len(names), vocab=alone["r2"].config.vocab_size)
    segments = torch.zeros_like(ids)
    segments[:, 5:] = 1
    assert_rows_match(engine.forward(ids, mask, names, token_type_ids=segments), names, alone, ids, mask, segments)
    assert engine.held_bytes() == sum(engine.nbytes(n) for n in engine.names)

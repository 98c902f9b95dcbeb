"""LoraWrapperRoberta's Python API refuses bad arguments, bad batches and bad save folders with a
ConfigError that says what it received and what it expects, never a raw torch / TypeError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from roberta_lora.errors import ConfigError
from roberta_lora.model.toy import toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta

VOCAB = 400


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- constructor
@pytest.mark.parametrize(("arguments", "named"), [
    ({"seed": "x"}, "seed='x' (expected None or an integer"),
    ({"seed": 1.5}, "seed=1.5"),
    ({"seed": True}, "seed=True"),
    ({"targets": 7}, "targets=7 (expected"),
    ({"targets": ["query", 3]}, "targets=['query', 3]"),
    ({"targets": ["dense"]}, "unknown LoRA target"),
    ({"lora_rank": 0}, "lora_rank=0 (expected an integer in 1..1024"),
    ({"lora_rank": "8"}, "lora_rank='8' (expected an integer)"),
    ({"lora_alpha": float("nan")}, "lora_alpha=nan (expected a positive finite number)"),
    ({"lora_alpha": "16"}, "lora_alpha='16' (expected a number)"),
    ({"num_classes": "2"}, "num_classes='2' (expected an integer)"),
    ({"num_classes": 0}, "num_classes=0 (expected an integer in 1.."),
    ({"lora_dropout": 1.5}, "lora_dropout=1.5 (expected a number in [0, 1))"),
    ({"head_dropout": -0.1}, "head_dropout=-0.1"),
    ({"lora_dropout": "0.1"}, "lora_dropout='0.1' (expected a number)"),
    ({"task_type": 7}, "task_type=7 (expected one of ['glue'"),
    ({"task_type": "glu"}, "task_type='glu'"),
    ({"label_names": "ab"}, "label_names='ab' (expected a list of class names"),
    ({"label_names": [0, 1]}, "label_names=[0, 1]"),
    ({"train_biases": "yes"}, "train_biases='yes' (expected True or False)"),
    ({"head": 3}, "head=3 (expected one of"),
    ({"method": None}, "method=None (expected one of"),
    ({"model_id": 3}, "model_id=3 (expected a hub id or a checkpoint folder"),
    ({"task": 5}, "task=5 (expected None or a string"),
    ({"attn_implementation": 7}, "attn_implementation=7"),
    ({"method": "full", "quantize": "4bit"}, "method='full' trains every base weight"),
])
def test_a_bad_argument_is_one_config_error_naming_it(arguments, named) -> None:
    arguments = {"model_id": toy_config(VOCAB), **arguments}
    with pytest.raises(ConfigError, match="invalid LoraWrapperRoberta arguments") as error:
        LoraWrapperRoberta(**arguments)
    assert named in str(error.value)


def test_every_problem_is_reported_at_once_before_the_base_is_loaded(tmp_path) -> None:
    # The model folder does not exist: the argument errors come first, all of them in one message.
    with pytest.raises(ConfigError) as error:
        LoraWrapperRoberta(model_id=str(tmp_path / "no-such-model"), seed="x", lora_rank=0, lora_dropout=1.5,
                           targets=7, train_biases="yes")
    message = str(error.value)
    for named in ("seed='x'", "lora_rank=0", "lora_dropout=1.5", "targets=7", "train_biases='yes'"):
        assert named in message
    assert "lora_alpha" not in message, "a bad rank does not also blame the alpha derived from it"
    assert "--model" not in message


def test_numpy_integers_and_tuples_are_accepted_as_plain_values() -> None:
    model = LoraWrapperRoberta(model_id=toy_config(VOCAB), seed=np.int64(3), lora_rank=np.int64(4),
                               num_classes=np.int32(3), label_names=("a", "b", "c"), lora_alpha=np.float32(8))
    config = model.adapter_config
    assert (config.lora_rank, config.num_classes, config.lora_alpha) == (4, 3, 8.0)
    assert type(config.lora_rank) is int and type(config.lora_alpha) is float
    json.loads(config.to_json())  # still serialisable


# ----------------------------------------------------------------------------- forward
@pytest.fixture(scope="module")
def classifier() -> LoraWrapperRoberta:
    return LoraWrapperRoberta(model_id=toy_config(VOCAB, max_positions=20), num_classes=3, seed=0)


@pytest.fixture(scope="module")
def span_model() -> LoraWrapperRoberta:
    return LoraWrapperRoberta(model_id=toy_config(VOCAB), task_type="squad_v2", seed=0)


def ids(batch: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("batch", "named"), [
    ({"input_ids": ids().float()}, "input_ids must be a 2-D integer tensor .* got a tensor of dtype float32"),
    ({"input_ids": ids()[0]}, r"input_ids must be a 2-D .* shape \(8,\)"),
    ({"input_ids": ids().tolist()}, "input_ids must be a 2-D integer tensor .* got list"),
    ({"input_ids": ids(), "attention_mask": torch.ones(2, 5)}, r"attention_mask must be .* input_ids \(2, 8\).* \(2, 5\)"),
    ({"input_ids": ids(), "attention_mask": torch.ones(2, 1, 8)}, r"attention_mask .* shape \(2, 1, 8\)"),
    ({"input_ids": ids(), "token_type_ids": torch.zeros(2, 7, dtype=torch.long)}, "token_type_ids must be"),
    ({"input_ids": ids(2, 19)}, "19 tokens per row, more than the 18 this roberta model's position table holds"),
    ({"input_ids": ids(2, 0)}, r"shape \(2, 0\): an empty batch"),
    ({"input_ids": ids(0, 8)}, r"shape \(0, 8\): an empty batch"),
    ({"input_ids": ids().clone().fill_(VOCAB)}, f"token id {VOCAB}, outside this model's vocabulary .*0..{VOCAB - 1}"),
    ({"input_ids": ids().clone().fill_(-1)}, "token id -1, outside"),
    ({"input_ids": ids(), "labels": torch.tensor([0, 3])}, r"labels holds class 3, but this model has 3 classes.*0..2"),
    ({"input_ids": ids(), "labels": torch.tensor([-1, 0])}, "labels holds class -1"),
    ({"input_ids": ids(), "labels": torch.tensor([-100, -5])}, "labels holds class -5"),
    ({"input_ids": ids(), "labels": torch.tensor([0.0, 1.0])}, r"labels must be class indices, an integer tensor of shape \(2,\)"),
    ({"input_ids": ids(), "labels": torch.tensor([0, 1, 1])}, r"labels must be class indices.* shape \(3,\)"),
    ({"input_ids": ids(), "labels": [0, 1]}, "labels must be a tensor, got list"),
    ({"input_ids": ids(), "start_positions": torch.tensor([0, 1]), "end_positions": torch.tensor([1, 2])},
     "targets of a SQuAD"),
])
def test_a_bad_classification_batch_is_a_config_error(classifier, batch, named) -> None:
    with pytest.raises(ConfigError, match=named):
        classifier(**batch)


def test_good_batches_still_pass_and_ignored_labels_stay_ignored(classifier) -> None:
    batch = ids(3, 18)  # the whole position table (20 positions less RoBERTa's offset of 2)
    out = classifier(batch, torch.ones_like(batch), labels=torch.tensor([0, 2, -100]))
    expected = torch.nn.functional.cross_entropy(out.logits[:2], torch.tensor([0, 2]))
    torch.testing.assert_close(out.loss, expected)
    assert classifier(batch.int(), labels=torch.tensor([1, 1, 1], dtype=torch.int32)).loss.isfinite()
    regression = LoraWrapperRoberta(model_id=toy_config(VOCAB), num_classes=1, seed=0)
    assert regression(ids(), labels=torch.tensor([0.5, 4.0])).loss.isfinite()


@pytest.mark.parametrize(("targets", "named"), [
    ({"labels": torch.tensor([0, 1])}, "labels are the targets of a classifier; .* pass start_positions and end_pos"),
    ({"start_positions": torch.tensor([0, 1])}, "pass start_positions and end_positions together"),
    ({"start_positions": torch.tensor([0.0, 1.0]), "end_positions": torch.tensor([1, 2])},
     r"start_positions must be an integer tensor of shape \(2,\)"),
    ({"start_positions": torch.tensor([0, 1]), "end_positions": torch.tensor([[1, 2]])}, "end_positions must be"),
])
def test_a_bad_span_batch_is_a_config_error(span_model, targets, named) -> None:
    with pytest.raises(ConfigError, match=named):
        span_model(ids(), **targets)
    out = span_model(ids(), start_positions=torch.tensor([0, 99]), end_positions=torch.tensor([1, 99]))
    assert out.loss.isfinite()  # positions past the sequence are ignored, as before


def test_the_position_limit_follows_the_family() -> None:
    bert = LoraWrapperRoberta(model_id=toy_config(VOCAB, family="bert", max_positions=16), seed=0)
    bert(ids(2, 16), token_type_ids=torch.zeros(2, 16, dtype=torch.long))  # BERT has no padding offset
    with pytest.raises(ConfigError, match="17 tokens per row, more than the 16 this bert model's"):
        bert(ids(2, 17))
    with pytest.raises(ConfigError, match="token_type_ids must be int64 or int32 segment ids"):
        bert(ids(), token_type_ids=torch.zeros(2, 8))


# ----------------------------------------------------------------------------- save_adapter
@pytest.fixture(scope="module")
def model() -> LoraWrapperRoberta:
    return LoraWrapperRoberta(model_id=toy_config(VOCAB), seed=0)


def test_a_file_is_refused(model, tmp_path) -> None:
    (tmp_path / "results.txt").write_text("old results\n")
    with pytest.raises(ConfigError, match=f"cannot save the adapter to {tmp_path / 'results.txt'}: it is a file"):
        model.save_adapter(tmp_path / "results.txt")
    with pytest.raises(ConfigError, match="lies under the file .*results.txt"):
        model.save_adapter(tmp_path / "results.txt" / "adapter")
    assert (tmp_path / "results.txt").read_text() == "old results\n"


@pytest.mark.parametrize("keep", [None, "tokenizer only"])
def test_a_model_checkpoint_folder_is_refused_and_still_loads(model, tiny_model_dir, tmp_path, keep) -> None:
    checkpoint = Path(shutil.copytree(tiny_model_dir, tmp_path / "checkpoint"))
    if keep == "tokenizer only":
        (checkpoint / "model.safetensors").unlink()
    before = files_under(checkpoint)
    with pytest.raises(ConfigError, match=f"cannot save the adapter to {checkpoint}: it is a model checkpoint "
                                          r"\(config.json with .*PEFT adapter.*folder of its own"):
        model.save_adapter(checkpoint)
    assert files_under(checkpoint) == before
    if keep is None:
        from transformers import AutoModel

        AutoModel.from_pretrained(checkpoint)  # no adapter_config.json appeared: transformers still loads it


def project(folder: Path) -> Path:
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "analysis.py").write_text("print('hello')\n")
    (folder / "README.md").write_text("# my project\n")
    return folder


def test_a_folder_that_is_not_an_adapter_is_refused(model, tmp_path, monkeypatch) -> None:
    folder = project(tmp_path / "project")
    before = files_under(folder)
    with pytest.raises(ConfigError, match=r"files that are not an adapter's \(.git, README.md, analysis.py\).*"
                                          f"new folder, e.g. {folder / 'adapter'}"):
        model.save_adapter(folder)
    monkeypatch.chdir(folder)
    with pytest.raises(ConfigError, match=f"cannot save the adapter to .: it holds the working directory {folder}"):
        model.save_adapter(".")
    assert files_under(folder) == before
    model.save_adapter(folder / "adapter")  # what the message suggests works
    assert (folder / "adapter" / "adapter.safetensors").is_file()


def test_a_peft_adapter_folder_is_refused(model, tmp_path) -> None:
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    before = files_under(peft)
    with pytest.raises(ConfigError, match=r"holds a PEFT adapter \(peft_type in adapter_config.json\)"):
        model.save_adapter(peft)
    (peft / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"holds a PEFT adapter \(adapter_model.safetensors\).*import-peft"):
        model.save_adapter(peft)
    assert files_under(peft) == {**before, "adapter_model.safetensors": b"x"}


def test_an_adapter_folder_is_replaced_and_its_other_files_kept(model, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "adapter"
    model.save_adapter(folder, extra_files={"README.md": "# card\n"})
    (folder / "notes.md").write_text("mine\n")
    model.save_adapter(folder, metrics={"accuracy": 0.5})
    assert (folder / "notes.md").read_text() == "mine\n" and (folder / "README.md").read_text() == "# card\n"
    assert json.loads((folder / "adapter_config.json").read_text())["metrics"] == {"accuracy": 0.5}
    (tmp_path / "empty").mkdir()
    model.save_adapter(tmp_path / "empty")
    monkeypatch.chdir(folder)
    with pytest.raises(ConfigError, match="holds the working directory"):  # not fileio's ValueError
        model.save_adapter(".")


# ----------------------------------------------------------------------------- TrainConfig.from_recipe
@pytest.mark.parametrize(("task", "arguments", "named"), [
    ("sst2", {"recipe": "pisa"}, "unknown recipe 'pisa'"),
    ("sst2", {"recipe": "tutorial", "lora_rank": "8"}, "lora_rank='8'"),
    ("sst2", {"learning_rate": float("nan")}, "learning_rate=nan"),
    ("sst2", {"learning_rate": float("inf")}, "learning_rate=inf"),
    ("sst2", {"lora_rank": -1}, "lora_rank=-1"),
    ("sst2", {"lora_rank": 10**12}, "lora_rank"),
    ("sst2", {"learnin_rate": 1e-3}, "learnin_rate"),
    ("sst2", {"init_lora_weights": "loftq"}, "init_lora_weights='loftq'"),
    ("sst2", {"init_lora_weights": "orthogonal", "lora_rank": 5}, "multiple of 2"),
    ("sst2", {"init_lora_weights": "pissa", "use_dora": True}, "init_lora_weights='pissa'"),
    ("sst3", {}, "sst3"),
    ("", {}, "task"),
    ("\udcff", {}, "task"),
    ("x" * 5000, {}, "task"),
])
def test_from_recipe_refuses_bad_settings_with_one_config_error(task, arguments, named) -> None:
    from roberta_lora.training.config import TrainConfig

    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace("[", r"\[")):
        TrainConfig.from_recipe(task, **arguments)


def test_a_recipe_file_with_a_bad_start_is_refused_naming_the_file(tmp_path) -> None:
    from roberta_lora.training.config import TrainConfig

    (tmp_path / "bad.toml").write_text('name = "bad"\n[settings]\ninit_lora_weights = 3\n')
    with pytest.raises(ConfigError, match="init_lora_weights=3"):
        TrainConfig.from_recipe("sst2", recipe=str(tmp_path / "bad.toml"))
    (tmp_path / "unknown.toml").write_text('name = "unknown"\n[settings]\ninit_weights = "pissa"\n')
    with pytest.raises(ConfigError, match="'init_weights' is not a recipe setting"):
        TrainConfig.from_recipe("sst2", recipe=str(tmp_path / "unknown.toml"))

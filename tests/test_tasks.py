"""Task TOML files: bundled specs match the hub, and bad files are rejected with every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from roberta_lora.data.tasks import (
    Recipe,
    available_tasks,
    load_config_overrides,
    load_task,
    recipe_with_overrides,
    tasks_dir,
)
from roberta_lora.errors import ConfigError

ALL_TASKS = ["cola", "imdb", "mnli", "mrpc", "qnli", "qqp", "rte", "squad_v1", "squad_v2", "sst2", "stsb", "wnli"]

# name: (hub path, hub config, text columns, label names, main metric, validation splits, max_length)
EXPECTED = {
    "cola": ("nyu-mll/glue", "cola", ("sentence",), ("unacceptable", "acceptable"), "matthews_correlation"),
    "sst2": ("nyu-mll/glue", "sst2", ("sentence",), ("negative", "positive"), "accuracy"),
    "mrpc": ("nyu-mll/glue", "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "accuracy"),
    "stsb": ("nyu-mll/glue", "stsb", ("sentence1", "sentence2"), (), "pearson"),
    "qqp": ("nyu-mll/glue", "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), "accuracy"),
    "mnli": ("nyu-mll/glue", "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "accuracy"),
    "qnli": ("nyu-mll/glue", "qnli", ("question", "sentence"), ("entailment", "not_entailment"), "accuracy"),
    "rte": ("nyu-mll/glue", "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy"),
    "wnli": ("nyu-mll/glue", "wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy"),
    "imdb": ("stanfordnlp/imdb", None, ("text",), ("neg", "pos"), "accuracy"),
    "squad_v1": ("rajpurkar/squad", None, ("question", "context"), (), "f1"),
    "squad_v2": ("rajpurkar/squad_v2", None, ("question", "context"), (), "f1"),
}


def test_bundled_tasks_are_listed() -> None:
    assert available_tasks() == ALL_TASKS


@pytest.mark.parametrize("name", ALL_TASKS)
def test_bundled_task_matches_hub(name: str) -> None:
    spec = load_task(name)
    hub_path, hub_config, text_columns, label_names, main_metric = EXPECTED[name]
    assert (spec.name, spec.hub_path, spec.hub_config) == (name, hub_path, hub_config)
    assert spec.text_columns == text_columns
    assert spec.label_names == label_names
    assert spec.main_metric == main_metric and main_metric in spec.metrics
    assert spec.recipe == Recipe()  # every bundled task uses the tutorial recipe
    assert spec.source_path == tasks_dir().resolve() / f"{name}.toml"
    assert set(spec.local_files) == set(spec.splits)
    assert spec.description


@pytest.mark.parametrize(
    ("name", "num_labels", "max_length", "doc_stride", "validation"),
    [
        ("mnli", 3, 128, None, ("validation_matched", "validation_mismatched")),
        ("stsb", 1, 128, None, ("validation",)),
        ("rte", 2, 128, None, ("validation",)),
        ("squad_v1", 2, 384, 128, ("validation",)),
        ("squad_v2", 2, 384, 128, ("validation",)),
        ("imdb", 2, 512, None, ("test",)),
    ],
)
def test_shapes_and_splits(name: str, num_labels: int, max_length: int, doc_stride: int | None, validation: tuple) -> None:
    spec = load_task(name)
    assert (spec.num_labels, spec.max_length, spec.doc_stride, spec.validation_splits) == (
        num_labels, max_length, doc_stride, validation,
    )


def test_kinds_and_metrics() -> None:
    assert load_task("stsb").kind == "regression" and load_task("stsb").score_range == (0.0, 5.0)
    assert load_task("squad_v1").metrics == ("exact_match", "f1") and load_task("squad_v1").squad_version == 1
    assert load_task("squad_v2").metrics == ("exact", "f1") and load_task("squad_v2").squad_version == 2
    assert load_task("mrpc").metrics == ("accuracy", "f1")
    assert load_task("mnli").local_files["validation_mismatched"] == "MNLI/dev_mismatched.tsv"


def test_tutorial_recipe_defaults() -> None:
    r = Recipe()
    assert (r.lora_rank, r.lora_alpha, r.lora_dropout, r.batch_size, r.learning_rate, r.epochs) == (8, 8.0, 0.1, 16, 5e-4, 6)
    assert (r.warmup_ratio, r.weight_decay, r.head, r.seed) == (1 / 3, 0.0, "light", 42)


def test_unknown_name_lists_tasks_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'sst-2'.*cola.*Did you mean 'sst2'"):
        load_task("sst-2")


def _write(tmp_path: Path, text: str, name: str = "custom.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


CUSTOM = """
name = "toxic"
kind = "classification"
text_columns = ["comment"]
label_names = ["ok", "toxic"]
metrics = ["accuracy", "f1"]
main_metric = "f1"
[local_files]
train = "toxic/train.csv"
validation = "toxic/dev.csv"
[recipe]
lora_rank = 4
learning_rate = 1e-3
"""


def test_custom_task_file_is_loaded_by_path(tmp_path: Path) -> None:
    spec = load_task(str(_write(tmp_path, CUSTOM)))
    assert (spec.name, spec.kind, spec.local_format, spec.hub_path) == ("toxic", "classification", "table", None)
    assert spec.recipe == Recipe(lora_rank=4, learning_rate=1e-3)
    assert spec.num_labels == 2 and spec.max_length == 128 and spec.label_column == "label"


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, CUSTOM.replace('main_metric = "f1"', 'main_metric = "auc"\ncolour = "red"')
                  .replace("lora_rank = 4", "lora_rank = 0\nlora_rnak = 4"))
    with pytest.raises(ConfigError) as info:
        load_task(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "unknown key 'colour'; allowed keys: name, description, kind" in message
    assert "main_metric = 'auc' is not one of metrics" in message
    assert "recipe.lora_rank = 0; expected an integer >= 1" in message
    assert "unknown recipe key 'lora_rnak'; allowed keys: lora_rank, lora_alpha" in message


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ('kind = "classification"', 'kind = "ranking"', "kind = 'ranking'; expected one of"),
        ('label_names = ["ok", "toxic"]', 'label_names = ["ok"]', "at least two distinct names"),
        ('metrics = ["accuracy", "f1"]', 'metrics = ["acc"]', "unknown metric 'acc'"),
        ('text_columns = ["comment"]', 'text_columns = "comment"', "text_columns = 'comment'; expected a TOML list"),
        ("[local_files]", "max_length = 1024\n[local_files]", "max_length = 1024; expected 8..512"),
        ('train = "toxic/train.csv"', 'training = "toxic/train.csv"', "local_files.training: unknown split"),
        ('kind = "classification"', 'kind = "classification"\nlocal_format = "glue_tsv"\nglue_layout = "mrpc"',
         "GLUE layout 'mrpc' produces ['sentence1', 'sentence2']"),
        ("lora_rank = 4", 'head = "big"', "recipe.head = 'big'; expected one of ['light', 'roberta']"),
    ],
)
def test_invalid_task_file(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    assert replace in CUSTOM
    with pytest.raises(ConfigError, match="invalid task file") as info:
        load_task(str(_write(tmp_path, CUSTOM.replace(replace, by))))
    assert expected in str(info.value)


def test_bad_toml_syntax_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_task(str(path))


def test_missing_task_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_task(str(tmp_path / "nope.toml"))


def test_tasks_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, CUSTOM, "toxic.toml")
    monkeypatch.setenv("ROBERTA_LORA_TASKS_DIR", str(tmp_path))
    assert available_tasks() == ["toxic"]
    assert load_task("toxic").name == "toxic"


def test_recipe_with_overrides() -> None:
    recipe = recipe_with_overrides(Recipe(), {"lora_rank": 16, "lora_alpha": 32, "seed": None})
    assert recipe.lora_rank == 16 and recipe.lora_alpha == 32.0 and isinstance(recipe.lora_alpha, float)
    assert recipe.seed == 42  # None means "not given"
    with pytest.raises(ConfigError) as info:
        recipe_with_overrides(Recipe(), {"lora_dropout": 1.5, "epochs": 2.5, "optimizer": "sgd", "batch_size": True})
    message = str(info.value)
    for part in ("recipe.lora_dropout = 1.5", "recipe.epochs = 2.5", "unknown recipe key 'optimizer'",
                 "recipe.batch_size = True"):
        assert part in message


def test_load_config_overrides(tmp_path: Path) -> None:
    assert load_config_overrides(_write(tmp_path, "learning_rate = 3e-4\n[recipe]\nepochs = 3\n")) == {
        "learning_rate": 3e-4, "epochs": 3,
    }
    with pytest.raises(ConfigError, match=r"(?s)invalid config file .*unknown recipe key 'lr'.*allowed keys"):
        load_config_overrides(_write(tmp_path, "lr = 3e-4\n", "bad.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_overrides(tmp_path / "missing.toml")


def test_task_file_keys_are_the_taskspec_fields() -> None:
    import dataclasses

    from roberta_lora.data.tasks import _KEY_TYPES, TaskSpec

    assert set(_KEY_TYPES) == {f.name for f in dataclasses.fields(TaskSpec)} - {"source_path"}

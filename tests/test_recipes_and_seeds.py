"""Named recipes, several seeds with their summary, train-all's warm-start chains, and trackers."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import pytest

from roberta_lora.cli.main import main
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError
from roberta_lora.training.config import TrainConfig, resolve_train_config
from roberta_lora.training.seeds import train_seeds

from fixtures_glue import write_glue_fixture

TINY_RECIPE = """
name = "tiny-chain"
description = "a two-task chain for tests"
[settings]
lora_rank = 4
lora_alpha = 8.0
epochs = 2
batch_size = 8
head = "roberta"
[tasks.mnli]
learning_rate = 1e-3
[tasks.rte]
learning_rate = 2e-3
warm_start_from = "mnli"
"""


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    for task in ("rte", "mnli", "sst2"):
        write_glue_fixture(root, task, n_train=16, n_dev=8)
    return root


def best_metric(run_dir: Path, metric: str) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return max(r[f"eval_{metric}"] for r in records)


def test_precedence_task_recipe_named_recipe_config_file_flags(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY_RECIPE)
    rte = load_task("rte")
    assert resolve_train_config(rte, {}).learning_rate == rte.recipe.learning_rate  # the default keeps the task's
    named = resolve_train_config(rte, {"recipe": str(tmp_path / "tiny.toml")})
    assert (named.recipe, named.learning_rate, named.lora_rank, named.head, named.epochs) == (
        "tiny-chain", 2e-3, 4, "roberta", 2)
    (tmp_path / "config.toml").write_text("learning_rate = 3e-3\nlora_rank = 2\n")
    from_file = resolve_train_config(rte, {"recipe": str(tmp_path / "tiny.toml")}, tmp_path / "config.toml")
    assert (from_file.learning_rate, from_file.lora_rank, from_file.head) == (3e-3, 2, "roberta")
    flags = resolve_train_config(rte, {"recipe": str(tmp_path / "tiny.toml"), "lora_rank": 8}, tmp_path / "config.toml")
    assert (flags.learning_rate, flags.lora_rank) == (3e-3, 8)
    with pytest.raises(ConfigError, match="no settings for task 'sst2'.*tasks.sst2"):
        resolve_train_config(load_task("sst2"), {"recipe": str(tmp_path / "tiny.toml")})
    with pytest.raises(ConfigError, match="unknown recipe 'lora-paper-bas'.*Did you mean 'lora-paper-base'"):
        resolve_train_config(rte, {"recipe": "lora-paper-bas"})
    (tmp_path / "bad.toml").write_text("[settings]\nlearning_rat = 1\n[tasks.rte]\nwarm_start_from = 'rte'\n")
    with pytest.raises(ConfigError, match="'learning_rat' is not a recipe setting.*warm_start_from = 'rte'"):
        resolve_train_config(rte, {"recipe": str(tmp_path / "bad.toml")})


def test_seeds_give_a_summary_whose_median_is_right_and_finished_seeds_are_kept(tiny_model_dir, glue_dir,
                                                                               tmp_path) -> None:
    group = tmp_path / "rte-group"
    config = TrainConfig(task="rte", model=str(tiny_model_dir), data_dir=str(glue_dir), output_dir=str(group),
                         epochs=2, batch_size=8, eval_batch_size=8, lora_rank=2, cache_dir=str(tmp_path / "cache"))
    summary = train_seeds(config, [0, 1, 2], progress=False)
    best = [best_metric(group / f"seed-{s}", "accuracy") for s in (0, 1, 2)]
    stats = summary["statistics"]["accuracy"]
    assert summary["seeds"] == [0, 1, 2] and stats["n"] == 3
    assert stats["median"] == statistics.median(best) and stats["min"] == min(best) and stats["max"] == max(best)
    assert stats["std"] == pytest.approx(statistics.stdev(best))
    assert json.loads((group / "summary.json").read_text()) == summary
    assert "| accuracy |" in (group / "summary.md").read_text()
    assert [json.loads((group / f"seed-{s}/config.json").read_text())["seed"] for s in (0, 1, 2)] == [0, 1, 2]
    before = (group / "seed-1/adapter/adapter.safetensors").stat().st_mtime_ns
    again = train_seeds(config, [1, 3], progress=False)  # seed 1 is reused, seed 3 is new; the summary covers all
    assert (group / "seed-1/adapter/adapter.safetensors").stat().st_mtime_ns == before
    assert again["seeds"] == [0, 1, 2, 3]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not seed runs of roberta-lora"):
        train_seeds(TrainConfig(**{**config.__dict__, "output_dir": str(tmp_path / "notes")}), [0], progress=False)


def test_train_all_chains_warm_starts_per_seed_and_logs_to_tensorboard(tiny_model_dir, glue_dir, tmp_path,
                                                                       capsys) -> None:
    (tmp_path / "tiny.toml").write_text(TINY_RECIPE)
    root = tmp_path / "all"
    code = main(["train-all", "--tasks", "rte", "--recipe", str(tmp_path / "tiny.toml"), "--seeds", "0,1",
                 "--model", str(tiny_model_dir), "--data-dir", str(glue_dir), "--output-dir", str(root),
                 "--max-steps", "2", "--no-progress", "--cache-dir", str(tmp_path / "cache"),
                 "--report-to", "tensorboard"])
    assert code == 0, capsys.readouterr().err
    table = (root / "train-all.md").read_text()
    assert table.index("| mnli |") < table.index("| rte |")  # the source was added and trained first
    for seed in (0, 1):
        rte = json.loads((root / f"rte-lora/seed-{seed}/config.json").read_text())
        assert rte["init_from"] == str((root / f"mnli-lora/seed-{seed}/best").resolve())
        assert rte["recipe"] == "tiny-chain" and rte["learning_rate"] == 2e-3 and rte["seed"] == seed
    assert json.loads((root / "rte-lora/summary.json").read_text())["seeds"] == [0, 1]
    capsys.readouterr()
    assert main(["report", str(root)]) == 0  # the report goes beside train-all's own table
    assert {"results.md", "results.csv", "results.png", "train-all.md"} <= {p.name for p in root.iterdir()}
    assert "| rte |" in capsys.readouterr().out

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = root / "rte-lora/seed-0"
    events = EventAccumulator(str(next(run.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    accuracy = events.Scalars("eval/accuracy")
    assert [round(e.value, 6) for e in accuracy] == [round(r["eval_accuracy"], 6) for r in records]


def test_a_missing_tracker_package_is_a_clear_error(tiny_model_dir, glue_dir, tmp_path, capsys) -> None:
    code = main(["train", "--task", "rte", "--model", str(tiny_model_dir), "--data-dir", str(glue_dir),
                 "--output-dir", str(tmp_path / "run"), "--report-to", "wandb", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--report-to wandb needs the wandb package" in err
    assert not (tmp_path / "run").exists()


def sweep_argv(tiny_model_dir, glue_dir, root: Path, cache: Path, *extra: str) -> list[str]:
    return ["sweep", "--task", "rte", "--grid", "lr=1e-3,2e-3", "--grid", "rank=2", "--seeds", "0,1",
            "--model", str(tiny_model_dir), "--data-dir", str(glue_dir), "--output-dir", str(root), "--epochs", "2",
            "--batch-size", "8", "--no-progress", "--cache-dir", str(cache), *extra]


def test_a_grid_sweep_ranks_by_the_median_and_resumes_after_a_kill(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                                    monkeypatch) -> None:
    import roberta_lora.training.loop as loop

    root, cache = tmp_path / "sweep", tmp_path / "cache"
    real, calls = loop.evaluate_task, []

    def killed_in_the_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # trial 0: 2 seeds x 2 epochs; then the first epoch of trial 1
            raise KeyboardInterrupt("as if killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_task", killed_in_the_second_trial)
    assert main(sweep_argv(tiny_model_dir, glue_dir, root, cache)) == 130
    monkeypatch.setattr(loop, "evaluate_task", real)
    finished = (root / "trial-000/seed-1/adapter/adapter.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(sweep_argv(tiny_model_dir, glue_dir, root, cache)) == 0
    assert (root / "trial-000/seed-1/adapter/adapter.safetensors").stat().st_mtime_ns == finished  # kept
    rows = (root / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("trial,learning_rate,lora_rank,metric,median")
    medians = {}
    for trial in (0, 1):
        best = [best_metric(root / f"trial-00{trial}/seed-{s}", "accuracy") for s in (0, 1)]
        medians[trial] = statistics.median(best)
    ranked = [int(line.split(",")[0]) for line in rows[1:]]
    assert ranked == sorted(medians, key=lambda t: medians[t], reverse=True)
    assert "Ranked by the median accuracy" in capsys.readouterr().out
    # The same folder with another space is refused, not mixed.
    assert main(sweep_argv(tiny_model_dir, glue_dir, root, cache, "--grid", "alpha=4,8")) == 2
    assert "holds a sweep over" in capsys.readouterr().err


def test_an_optuna_sweep_prunes_and_continues(tiny_model_dir, glue_dir, tmp_path, capsys) -> None:
    pytest.importorskip("optuna")
    root, cache = tmp_path / "optuna", tmp_path / "cache"
    argv = sweep_argv(tiny_model_dir, glue_dir, root, cache, "--optuna", "3")
    assert main(argv) == 0, capsys.readouterr().err
    import optuna

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{root / 'optuna.db'}")
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trained = [t for t in complete if "repeat_of" not in t.user_attrs]
    assert len((root / "sweep.csv").read_text().splitlines()) == 1 + len(trained)  # a repeat is no second row
    assert main(argv) == 0  # all 3 done: nothing new runs
    assert len(optuna.load_study(study_name="sweep", storage=f"sqlite:///{root / 'optuna.db'}").trials) == 3


def test_an_optuna_trial_that_draws_trained_settings_again_reuses_their_result(tiny_model_dir, glue_dir, tmp_path,
                                                                                capsys, caplog) -> None:
    """Optuna's sampler can draw a setting it has tried (always, with more trials than combinations): the
    runs would be the same, so the result is reused instead of training again, and the table lists it once."""
    optuna = pytest.importorskip("optuna")
    root, cache = tmp_path / "optuna", tmp_path / "cache"
    argv = ["sweep", "--task", "rte", "--grid", "lr=1e-3", "--seeds", "0", "--optuna", "3", "--model",
            str(tiny_model_dir), "--data-dir", str(glue_dir), "--output-dir", str(root), "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--cache-dir", str(cache)]
    with caplog.at_level(logging.INFO, logger="roberta_lora"):
        assert main(argv) == 0, capsys.readouterr().err
    assert "--optuna 3 is more than the grid's 1 combination(s): only those are trained" in caplog.text
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{root / 'optuna.db'}")
    first, *repeats = study.trials
    assert [t.user_attrs.get("repeat_of") for t in study.trials] == [None, 0, 0]
    assert all(t.value == first.value and t.params == first.params for t in repeats)
    assert all(t.user_attrs["summary"] == first.user_attrs["summary"] for t in repeats)
    assert sorted(p.name for p in root.glob("trial-*")) == ["trial-000"]  # trained once
    assert len((root / "sweep.csv").read_text().splitlines()) == 2
    assert "written:" in capsys.readouterr().out


# The LoRA paper's RoBERTa GLUE settings (microsoft/LoRA examples/NLU scripts; large: the paper's Table 9,
# see recipes/lora-paper-large.toml for the three tasks where the scripts differ).
PAPER_TABLE = {  # task: (base batch, epochs, lr), (large batch, epochs, lr, max length)
    "mnli": ((16, 30, 5e-4), (4, 10, 3e-4, 128)), "sst2": ((16, 60, 5e-4), (4, 10, 4e-4, 128)),
    "mrpc": ((16, 30, 4e-4), (4, 20, 3e-4, 512)), "cola": ((32, 80, 4e-4), (4, 20, 2e-4, 128)),
    "qnli": ((32, 25, 4e-4), (4, 10, 2e-4, 512)), "qqp": ((16, 25, 5e-4), (4, 20, 3e-4, 512)),
    "rte": ((32, 80, 5e-4), (8, 20, 4e-4, 512)), "stsb": ((16, 40, 4e-4), (8, 30, 2e-4, 512)),
}


@pytest.mark.parametrize("task", sorted(PAPER_TABLE))
def test_the_paper_recipes_resolve_to_the_papers_table(task: str) -> None:
    (base_batch, base_epochs, base_lr), (batch, epochs, lr, length) = PAPER_TABLE[task]
    base = resolve_train_config(load_task(task), {"recipe": "lora-paper-base"})
    large = resolve_train_config(load_task(task), {"recipe": "lora-paper-large"})
    assert (base.batch_size, base.epochs, base.learning_rate, base.max_length) == (base_batch, base_epochs, base_lr, 512)
    assert (large.batch_size, large.epochs, large.learning_rate, large.max_length) == (batch, epochs, lr, length)
    for config in (base, large):
        assert (config.lora_rank, config.lora_alpha, config.targets, config.warmup_ratio, config.weight_decay) == (
            8, 16.0, "query,value", 0.06, 0.1)
        assert config.head == "roberta" and not (config.train_biases or config.train_layer_norms)
    from roberta_lora.data.recipes import load_recipe

    expected = "mnli" if task in ("mrpc", "rte", "stsb") else None
    assert load_recipe("lora-paper-base").warm_start_from(task) == expected
    assert load_recipe("lora-paper-large").warm_start_from(task) == expected


def test_the_gpu_reproduction_script_plans_with_a_measured_estimate(tiny_model_dir, glue_dir, capsys) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_lora_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_lora_paper", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main(["--model", str(tiny_model_dir), "--data-dir", str(glue_dir), "--tasks", "mnli,rte",
                        "--seeds", "0,1", "--measure-steps", "1", "--mixed-precision", "no", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["task", "epochs", "max"]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert rows["mnli"][1:4] == ["30", "512", "392,702"] and rows["rte"][1:4] == ["80", "512", "2,490"]
    hours = {task: float(row[-1]) for task, row in rows.items()}
    per_example = float(rows["mnli"][4])  # one measurement per length: both tasks use it
    assert hours["mnli"] == pytest.approx(392_702 * 1.05 * 30 * per_example * 2 / 3600, rel=0.01, abs=0.06)
    assert lines[3].startswith("total:")
    # A task whose files are not there is named with them and left out of the total; a bad --model is one line.
    code = script.main(["--model", str(tiny_model_dir), "--data-dir", str(glue_dir), "--tasks", "qqp,rte",
                        "--seeds", "0", "--measure-steps", "1", "--mixed-precision", "no", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "missing: QQP/train.tsv, QQP/dev.tsv" in out and "without qqp" in out
    assert script.main(["--model", str(glue_dir / "nothing"), "--data-dir", str(glue_dir), "--tasks", "rte",
                        "--dry-run"]) == 2
    assert "error: --model" in capsys.readouterr().err
    assert script.main(["--model", str(tiny_model_dir), "--data-dir", str(glue_dir), "--tasks", "sst3",
                        "--dry-run"]) == 2


def test_seeds_without_an_output_dir_go_under_outputs(tiny_model_dir, glue_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(task="rte", model=str(tiny_model_dir), data_dir=str(glue_dir), epochs=1, batch_size=8,
                         max_steps=1, lora_rank=2, cache_dir=str(tmp_path / "cache"))
    train_seeds(config, [5], progress=False)
    (group,) = (tmp_path / "outputs" / "rte").iterdir()
    assert group.name.endswith("-lora") and (group / "seed-5" / "adapter").is_dir() and (group / "summary.json").is_file()
    assert not (tmp_path / "seed-5").exists()


# ----------------------------------------------------------------------------- the default recipe
RECIPE_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "batch_size", "learning_rate", "epochs", "warmup_ratio",
                 "weight_decay", "head", "seed")


@pytest.mark.parametrize("task", ["sst2", "rte", "stsb", "squad_v2"])
def test_the_default_recipe_is_the_tutorial_s_with_a_pissa_start_and_the_roberta_head(task) -> None:
    spec = load_task(task)
    default = resolve_train_config(spec, {})
    tutorial = resolve_train_config(spec, {"recipe": "tutorial"})
    assert (default.recipe, default.init_lora_weights, default.head) == ("pissa", "pissa", "roberta")
    assert (tutorial.recipe, tutorial.init_lora_weights) == ("tutorial", "kaiming")
    for name in RECIPE_FIELDS:  # the tutorial is exactly the task file's recipe; the default differs in the head only
        assert getattr(tutorial, name) == getattr(spec.recipe, name), name
        if name != "head":
            assert getattr(default, name) == getattr(spec.recipe, name), name
    assert TrainConfig.from_recipe(task) == default
    assert TrainConfig.from_recipe(task, recipe="tutorial", lora_rank=4) == resolve_train_config(
        spec, {"recipe": "tutorial", "lora_rank": 4})
    assert TrainConfig() == resolve_train_config(load_task("sst2"), {"recipe": "tutorial"})  # literal = tutorial
    assert resolve_train_config(spec, {"recipe": "lora-paper-base"}).init_lora_weights == "kaiming" if task in (
        "sst2", "rte", "stsb") else True


@pytest.mark.parametrize(("flags", "clash"), [
    ({"use_dora": True}, "--use-dora"),
    ({"quantize": "4bit"}, "--quantize"),
    ({"init_from": "{adapter}"}, "--init-from"),
    ({"method": "head"}, "--method head"),
])
def test_the_default_pissa_start_yields_to_a_setting_that_cannot_use_it(flags, clash, caplog, tmp_path) -> None:
    spec = load_task("rte")
    (tmp_path / "adapter_config.json").write_text("{}")
    flags = {k: str(tmp_path) if v == "{adapter}" else v for k, v in flags.items()}
    with caplog.at_level("WARNING", logger="roberta_lora"):
        config = resolve_train_config(spec, flags)  # (a 4-bit base needs CUDA: the model loader says so later)
    assert config.init_lora_weights == "kaiming"
    assert clash in caplog.text and "init_lora_weights='pissa'" in caplog.text
    if "init_from" not in flags:  # asked for explicitly, the same pair is one clear error
        with pytest.raises(ConfigError, match="init_lora_weights='pissa'|--init-lora-weights pissa"):
            resolve_train_config(spec, {**flags, "init_lora_weights": "pissa"})


def test_a_warm_start_into_a_run_that_starts_from_the_base_is_refused(tiny_model_dir, tmp_path) -> None:
    from roberta_lora.adapters.warm_start import warm_start_from_adapter
    from roberta_lora.errors import AdapterError
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    LoraWrapperRoberta(model_id=str(tiny_model_dir), lora_rank=2, seed=1).save_adapter(tmp_path / "source")
    target = LoraWrapperRoberta(model_id=str(tiny_model_dir), lora_rank=2, init_lora_weights="pissa")
    with pytest.raises(AdapterError, match="--init-lora-weights kaiming"):
        warm_start_from_adapter(target, tmp_path / "source")

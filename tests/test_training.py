"""End-to-end training on a tiny model and tiny data in the real file formats."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roberta_lora.cli.main import main
from roberta_lora.errors import ConfigError
from roberta_lora.evaluation.evaluate import evaluate_adapter
from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import train

from fixtures_glue import write_glue_fixture, write_squad_fixture


def config(model_dir: Path, data_dir: Path, run_dir: Path, **overrides) -> TrainConfig:
    values = dict(task="mrpc", model=str(model_dir), data_dir=str(data_dir), output_dir=str(run_dir), epochs=2,
                  batch_size=8, eval_batch_size=8, cache_dir=str(run_dir.parent / "cache"))
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    for task in ("mrpc", "sst2", "rte", "stsb"):
        write_glue_fixture(root, task, n_train=32, n_dev=13)
    return root


@pytest.fixture(scope="module")
def mrpc_run(tiny_model_dir, glue_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "mrpc"
    return train(config(tiny_model_dir, glue_dir, run_dir), progress=False)


def test_glue_run_writes_every_output(mrpc_run) -> None:
    run = mrpc_run.run_dir
    for name in ("adapter/adapter.safetensors", "adapter/adapter_config.json", "adapter/README.md",
                 "best/adapter.safetensors", "metrics.jsonl", "config.json", "train.log", "curves.png",
                 "checkpoint/training_state.pt", "checkpoint/adapter/adapter.safetensors",
                 "eval/validation/predictions.jsonl"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"eval_accuracy", "eval_f1", "train_loss", "learning_rate"} <= set(records[0])
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (run / "adapter" / "README.md").read_text()
    assert "mrpc" in card and "from_adapter" in card and "accuracy" in card
    assert json.loads((run / "config.json").read_text())["resolved"]["total_steps"] == 8
    assert len((run / "eval/validation/predictions.jsonl").read_text().splitlines()) == 13
    stored = json.loads((run / "adapter/adapter_config.json").read_text())["metrics"]
    assert stored == mrpc_run.metrics == {k.removeprefix("eval_"): v for k, v in records[-1].items()
                                          if k.startswith("eval_")}


def test_evaluate_reproduces_stored_metrics_exactly(mrpc_run, glue_dir) -> None:
    for folder in ("adapter", "best"):
        adapter = mrpc_run.run_dir / folder
        stored = json.loads((adapter / "adapter_config.json").read_text())["metrics"]
        assert evaluate_adapter(adapter, data_dir=glue_dir, batch_size=8) == stored


def test_learning_rate_schedule_at_known_steps(mrpc_run) -> None:
    state = torch.load(mrpc_run.run_dir / "checkpoint/training_state.pt", weights_only=True)
    rates = state["history"]["learning_rates"]
    # 32 examples / batch 8 = 4 steps per epoch, 2 epochs = 8 steps, warm-up round(8/3) = 3 steps.
    expected = [5e-4 * s / 3 if s < 3 else 5e-4 * (8 - s) / 5 for s in range(8)]
    assert rates == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert state["scheduler"]["last_epoch"] == 8


def test_resume_after_interruption_gives_the_same_adapter(tiny_model_dir, glue_dir, tmp_path, monkeypatch) -> None:
    import roberta_lora.training.loop as train_module

    whole = train(config(tiny_model_dir, glue_dir, tmp_path / "whole", epochs=3, task="sst2"), progress=False)
    real_evaluate = train_module.evaluate_task
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill during epoch 2's evaluation")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_task", crash_in_second_epoch)
    cut = config(tiny_model_dir, glue_dir, tmp_path / "cut", epochs=3, task="sst2")
    with pytest.raises(KeyboardInterrupt):
        train(cut, progress=False)
    monkeypatch.setattr(train_module, "evaluate_task", real_evaluate)
    with pytest.raises(Exception, match="--resume"):
        train(config(tiny_model_dir, glue_dir, tmp_path / "cut", epochs=3, task="sst2"), progress=False)
    resumed = train(config(tiny_model_dir, glue_dir, tmp_path / "cut", epochs=3, task="sst2", resume=True),
                    progress=False)
    ours = load_file(resumed.run_dir / "adapter/adapter.safetensors")
    reference = load_file(whole.run_dir / "adapter/adapter.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    assert resumed.metrics == whole.metrics
    assert len((resumed.run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_squad_v2_run_and_reevaluation(tiny_model_dir, tmp_path, capsys) -> None:
    data = write_squad_fixture(tmp_path / "data" / "squad" / "dev-v2.0.json", version=2)
    write_squad_fixture(tmp_path / "data" / "squad" / "train-v2.0.json", version=2)
    result = train(TrainConfig(task="squad_v2", model=str(tiny_model_dir), data_dir=str(tmp_path / "data"),
                               output_dir=str(tmp_path / "run"), epochs=2, batch_size=4, eval_batch_size=4,
                               max_length=64, doc_stride=16, cache_dir=str(tmp_path / "cache")), progress=False)
    for name in ("predictions.json", "nbest_predictions.json", "null_odds.json"):
        assert (result.run_dir / "eval" / "validation" / name).is_file(), name
    assert {"exact", "f1", "HasAns_exact", "NoAns_exact", "best_f1"} <= set(result.metrics)
    assert evaluate_adapter(result.run_dir / "adapter", data_dir=tmp_path / "data", batch_size=4) == result.metrics
    # The official-format predictions file scores to the same numbers through `score` (training already
    # applied the no-answer threshold, so the null odds only feed best_exact / best_f1: threshold inf).
    predictions = result.run_dir / "eval" / "validation"
    capsys.readouterr()
    assert main(["score", "--task", "squad_v2", "--data", str(data), "--predictions", str(predictions / "predictions.json"),
                 "--na-probs", str(predictions / "null_odds.json"), "--na-prob-thresh", "inf"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(result.metrics, abs=1e-9)


def test_init_from_copies_lora_and_reinitialises_a_different_head(mrpc_run, tiny_model_dir, glue_dir,
                                                                      tmp_path) -> None:
    from roberta_lora.adapters.warm_start import warm_start_from_adapter
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    source = mrpc_run.run_dir / "adapter"
    same_labels = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=1, label_names=["not_equivalent", "equivalent"])
    copied = warm_start_from_adapter(same_labels, source)
    assert any(name.startswith("classifier.") for name in copied)
    other = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=1, num_classes=1)
    fresh_head = other.classifier.out_proj.weight.detach().clone()
    copied = warm_start_from_adapter(other, source)
    assert not any(name.startswith("classifier.") for name in copied)
    assert torch.equal(other.classifier.out_proj.weight, fresh_head)
    tensors = load_file(source / "adapter.safetensors")
    name = "roberta.encoder.layer.0.attention.self.query.lora_B.weight"
    assert torch.equal(dict(other.named_parameters())[name], tensors[name])
    # And from the CLI: STS-B (regression) warm-started from the MRPC adapter.
    code = main(["train", "--task", "stsb", "--model", str(tiny_model_dir), "--data-dir", str(glue_dir),
                 "--output-dir", str(tmp_path / "stsb"), "--epochs", "1", "--batch-size", "8",
                 "--init-from", str(source), "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and (tmp_path / "stsb/adapter/adapter.safetensors").is_file()


def test_predict_and_score_commands(mrpc_run, glue_dir, capsys) -> None:
    adapter = mrpc_run.run_dir / "adapter"
    assert main(["predict", "--adapter", str(adapter), "--text", "A cat sat.", "--text-pair", "The cat sat."]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["label"] in ("not_equivalent", "equivalent") and set(line["scores"]) == {"not_equivalent", "equivalent"}
    assert math.isclose(sum(line["scores"].values()), 1.0, abs_tol=1e-5)
    predictions = mrpc_run.run_dir / "eval/validation/predictions.jsonl"
    assert main(["score", "--task", "mrpc", "--data", str(glue_dir), "--predictions", str(predictions)]) == 0
    assert json.loads(capsys.readouterr().out) == mrpc_run.metrics


def test_head_and_full_methods_and_train_all_table(tiny_model_dir, glue_dir, tmp_path, capsys) -> None:
    code = main(["train-all", "--tasks", "rte,stsb", "--methods", "lora,head,full", "--model", str(tiny_model_dir),
                 "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "16", "--output-dir",
                 str(tmp_path / "all"), "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    table = (tmp_path / "all/train-all.md").read_text()
    assert "| task | lora | head | full |" in table and "**GLUE average**" in table
    rows = (tmp_path / "all/train-all.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("task,method,main_metric,task_score")
    head_config = json.loads((tmp_path / "all/rte-head/adapter/adapter_config.json").read_text())
    assert head_config["method"] == "head"
    sizes = {m: (tmp_path / f"all/rte-{m}/adapter/adapter.safetensors").stat().st_size for m in ("lora", "head", "full")}
    assert sizes["head"] < sizes["lora"] < sizes["full"]
    # One GLUE average: `report` on the same runs gives train-all's numbers (task scores: STS-B is the mean of
    # Pearson and Spearman at the best evaluation).
    import csv

    from roberta_lora.training.report import write_report
    table_rows = {(r["task"], r["method"]): r for r in csv.DictReader((tmp_path / "all/train-all.csv").open())}
    report = write_report(tmp_path / "all", destination=tmp_path / "report")
    for average in report.averages:
        ours = [float(table_rows[(t, average.method)]["task_score"]) for t in ("rte", "stsb")]
        assert average.ours == pytest.approx(100 * sum(ours) / 2, abs=1e-6), average.method
        assert f"{average.ours:.2f}" in table.split("**GLUE average**")[1].splitlines()[0]
    for row in report.rows:
        assert row.task_score == pytest.approx(100 * float(table_rows[(row.task, row.method)]["task_score"]))


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "sst2", "--rank", "0", "--model", "{model}", "--data-dir", "{data}"], "lora_rank=0"),
    (["train", "--task", "sst2", "--model", "{model}", "--data-dir", "{missing}"], "no such file or folder"),
    (["train", "--task", "nosuchtask", "--model", "{model}"], "nosuchtask"),
    (["train", "--task", "sst2", "--model", "roberta-base"], "--model"),
    (["train", "--task", "sst2", "--model", "{model}"], "--data-dir"),
    (["evaluate", "--adapter", "{missing}"], "does not exist"),
    (["train", "--task", "sst2", "--model", "{model}", "--data-dir", "{data}", "--mixed-precision", "fp16"], "CUDA"),
])
def test_cli_errors_are_one_clear_line(argv, message, tiny_model_dir, glue_dir, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    filled = [a.format(model=tiny_model_dir, data=glue_dir, missing=tmp_path / "missing") for a in argv]
    assert main([*filled, "--cache-dir", str(tmp_path / "c")] if argv[0] == "train" else filled) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_flag_value_is_rejected_by_argparse(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--task", "sst2", "--epochs", "two"])
    assert info.value.code == 2 and "invalid int value" in capsys.readouterr().err


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tiny_model_dir, glue_dir, tmp_path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    # `--cpu --num_processes 2` starts ONE process in accelerate >= 1.x (its simple launcher fans out only
    # through mpirun); `--multi_gpu` on a machine without CUDA starts 2 gloo processes on the CPU.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "roberta_lora", "train", "--task", "sst2", "--model", str(tiny_model_dir),
               "--data-dir", str(glue_dir), "--output-dir", str(run), "--epochs", "1", "--batch-size", "4",
               "--eval-batch-size", "4", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["resolved"]["num_processes"] == 2
    # Only the main process prints: one result, and each log line once.
    assert done.stdout.count('"run_dir"') == 1, done.stdout
    logged = [line for line in done.stderr.splitlines() if line.startswith("INFO roberta_lora")]
    assert logged and len(logged) == len(set(logged)), logged
    lines = [json.loads(x) for x in (run / "eval/validation/predictions.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(13)), "each validation example exactly once"
    stored = json.loads((run / "adapter/adapter_config.json").read_text())["metrics"]
    # One process re-evaluating the saved adapter sees the same numbers the two processes reported.
    assert evaluate_adapter(run / "adapter", data_dir=glue_dir, batch_size=4) == stored


def test_config_file_grad_accum_max_steps_and_bf16(tiny_model_dir, glue_dir, tmp_path) -> None:
    from roberta_lora.data.tasks import load_task
    from roberta_lora.training.config import resolve_train_config

    (tmp_path / "recipe.toml").write_text("[recipe]\nlearning_rate = 1e-3\nlora_rank = 4\n\nmax_length = 32\n")
    overrides = {"model": str(tiny_model_dir), "data_dir": str(glue_dir), "output_dir": str(tmp_path / "run"),
                 "grad_accum": 2, "batch_size": 4, "max_steps": 3, "mixed_precision": "bf16",
                 "lora_rank": 2, "cache_dir": str(tmp_path / "cache")}
    config = resolve_train_config(load_task("rte"), overrides, tmp_path / "recipe.toml")
    # Flags beat the file, the file beats the task recipe.
    assert (config.learning_rate, config.lora_rank, config.max_length, config.epochs) == (1e-3, 2, 32, 6)
    result = train(config, progress=False)
    resolved = json.loads((result.run_dir / "config.json").read_text())["resolved"]
    assert resolved["total_steps"] == 3 and resolved["steps_per_epoch"] == 4  # 32 rows / 4 / 2
    state = torch.load(result.run_dir / "checkpoint/training_state.pt", weights_only=True)
    assert state["global_step"] == 3 and len(state["history"]["losses"]) == 3
    # The default recipe starts from the base weight (PiSSA): the file holds the rank-2r update for the plain base.
    saved = json.loads((result.run_dir / "adapter/adapter_config.json").read_text())
    assert (saved["lora_rank"], saved["init_lora_weights"], saved["head"]) == (4, "pissa", "roberta")
    (tmp_path / "bad.toml").write_text("learning_rat = 1\n")
    with pytest.raises(Exception, match="unknown setting.*learning_rat"):
        resolve_train_config(load_task("rte"), {}, tmp_path / "bad.toml")


def test_evaluate_after_a_bf16_run_in_the_same_process(mrpc_run, tiny_model_dir, glue_dir, tmp_path,
                                                       monkeypatch) -> None:
    # accelerate keeps one global state per process: a plain Accelerator() made after a bf16 run
    # silently evaluates in bf16 too. evaluate_adapter must evaluate in full precision.
    import roberta_lora.evaluation.evaluate as evaluation

    train(config(tiny_model_dir, glue_dir, tmp_path / "bf16", epochs=1, mixed_precision="bf16"), progress=False)
    seen = []
    real = evaluation.evaluate_task

    def spy(model, data, tokenizer, accelerator, *args, **kwargs):
        model.register_forward_hook(lambda module, inputs, output: seen.append(
            (torch.is_autocast_enabled("cpu"), output.logits.dtype)))
        return real(model, data, tokenizer, accelerator, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_task", spy)
    assert evaluate_adapter(mrpc_run.run_dir / "adapter", data_dir=glue_dir, batch_size=8) == mrpc_run.metrics
    assert seen and set(seen) == {(False, torch.float32)}  # no bf16 autocast left over from the training


def test_init_from_refuses_another_lora_alpha(mrpc_run, tiny_model_dir) -> None:
    from roberta_lora.adapters.warm_start import warm_start_from_adapter
    from roberta_lora.errors import AdapterError
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    # Same rank and targets, alpha 16 instead of 8: the copied factors would be scaled twice as much.
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=1, lora_alpha=16)
    before = {n: t.clone() for n, t in model.adapter_state_dict().items()}
    with pytest.raises(AdapterError, match="alpha 8 on .*alpha 16 on .*--alpha 8"):
        warm_start_from_adapter(model, mrpc_run.run_dir / "adapter")
    assert all(torch.equal(before[n], t) for n, t in model.adapter_state_dict().items())


def test_logged_loss_is_the_mean_over_the_steps_micro_batches(tiny_model_dir, glue_dir, tmp_path, monkeypatch) -> None:
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    seen: list[float] = []
    real = LoraWrapperRoberta.forward

    def recording(self, *args, **kwargs):
        output = real(self, *args, **kwargs)
        if self.training and output.loss is not None:
            seen.append(output.loss.item())
        return output

    monkeypatch.setattr(LoraWrapperRoberta, "forward", recording)
    result = train(config(tiny_model_dir, glue_dir, tmp_path / "run", grad_accum=2, batch_size=4, max_steps=3,
                          lora_dropout=0.0), progress=False)
    losses = torch.load(result.run_dir / "checkpoint/training_state.pt", weights_only=True)["history"]["losses"]
    assert len(seen) == 6 and len(losses) == 3
    assert losses == pytest.approx([(seen[i] + seen[i + 1]) / 2 for i in (0, 2, 4)], rel=1e-6)


def test_several_trainings_in_one_process_and_a_second_precision_refused(tiny_model_dir, glue_dir, tmp_path) -> None:
    first = train(config(tiny_model_dir, glue_dir, tmp_path / "a", max_steps=2), progress=False)
    second = train(config(tiny_model_dir, glue_dir, tmp_path / "b", max_steps=2), progress=False)
    assert first.metrics == second.metrics  # same settings and seed, same process: the same run again
    with pytest.raises(ConfigError, match="already ran accelerate with mixed_precision='no'.*new process"):
        train(config(tiny_model_dir, glue_dir, tmp_path / "c", max_steps=2, mixed_precision="bf16"), progress=False)
    assert not (tmp_path / "c").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_nan_loss_on_one_process_stops_every_process(tiny_model_dir, glue_dir, tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    script = Path(__file__).parent / "scripts" / "nan_on_one_rank.py"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
               "train", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(glue_dir),
               "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--no-progress",
               "--cache-dir", str(tmp_path / "cache")]
    # Before the fix, process 0 waited forever in backward's all-reduce for process 1, which had stopped.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    assert done.stderr.count("roberta-lora train: error: loss became nan at step 2 (epoch 1)") == 2, done.stderr[-3000:]


def test_no_progress_silences_every_progress_bar(tiny_model_dir, glue_dir, tmp_path, capsys) -> None:
    # transformers' "Loading weights" bar and datasets' map / save bars included; -v is not given, so no
    # library load reports either.
    code = main(["train", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(glue_dir),
                 "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0
    assert "it/s" not in err and "%|" not in err and "examples/s" not in err, err[-2000:]

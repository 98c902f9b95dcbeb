"""Steps as the unit of a run: --max-steps sets the schedule, evaluation / checkpoints / logging every N
steps, checkpoints kept, the metric that picks best/ (NaN ranks worst), early stopping, the loss of a
partial epoch, gradient checkpointing, and the GradScaler in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from roberta_lora.errors import ConfigError
from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import train
from roberta_lora.training.progress import RunState, better

from fixtures_glue import write_glue_fixture


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("steps-data")
    write_glue_fixture(root, "sst2", n_train=80, n_dev=16)
    write_glue_fixture(root, "stsb", n_train=40, n_dev=16)
    return root


def config(tiny_model_dir, data_dir, run: Path, **kwargs) -> TrainConfig:
    values = {"task": "sst2", "model": str(tiny_model_dir), "data_dir": str(data_dir), "output_dir": str(run),
              "batch_size": 8, "epochs": 1, "learning_rate": 5e-3, "warmup_ratio": 0.0, "eval_batch_size": 16}
    return TrainConfig(**{**values, **kwargs})


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_max_steps_beyond_the_epochs_trains_every_step_of_the_schedule(tiny_model_dir, data_dir, tmp_path):
    # 80 rows / batch 8 = 10 steps per epoch; epochs=1 but --max-steps 20: the Trainer's rule, steps win.
    result = train(config(tiny_model_dir, data_dir, tmp_path / "run", max_steps=20), progress=False)
    state = torch.load(result.run_dir / "checkpoint/training_state.pt", weights_only=True)
    assert state["global_step"] == 20 and len(state["history"]["losses"]) == 20
    rates = state["history"]["learning_rates"]
    assert rates[0] == pytest.approx(5e-3) and rates[-1] == pytest.approx(5e-3 / 20)  # decays to 0 over 20 steps
    resolved = json.loads((result.run_dir / "config.json").read_text())["resolved"]
    assert resolved["total_steps"] == 20 and resolved["steps_per_epoch"] == 10
    assert [r["epoch"] for r in records(result.run_dir)] == [1, 2]


def test_a_partial_last_epoch_reports_its_own_mean_loss(tiny_model_dir, data_dir, tmp_path):
    result = train(config(tiny_model_dir, data_dir, tmp_path / "run", max_steps=13), progress=False)
    losses = torch.load(result.run_dir / "checkpoint/training_state.pt", weights_only=True)["history"]["losses"]
    first, second = records(result.run_dir)
    assert first["step"] == 10 and second["step"] == 13 and second["epoch"] == 2
    assert first["train_loss"] == pytest.approx(sum(losses[:10]) / 10, abs=0)
    assert second["train_loss"] == pytest.approx(sum(losses[10:]) / 3, abs=0)  # not the last 10 steps


def test_eval_save_and_logging_steps_and_the_checkpoints_kept(tiny_model_dir, data_dir, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="roberta_lora"):
        train(config(tiny_model_dir, data_dir, run, epochs=2, eval_steps=4, save_steps=3, logging_steps=5,
                     save_total_limit=3), progress=False)
    assert [r["step"] for r in records(run)] == [4, 8, 12, 16, 20]
    assert [r["epoch"] for r in records(run)][:2] == [0.4, 0.8]
    # checkpoints at 3, 6, ... 18 and at the end (20): the latest in checkpoint/, two older ones kept
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-18"]
    assert torch.load(run / "checkpoint/training_state.pt", weights_only=True)["global_step"] == 20
    kept = torch.load(run / "checkpoint-15/training_state.pt", weights_only=True)
    assert kept["global_step"] == 15 and kept["epoch"] == 1 and kept["batches"] == 5
    logged = [r.getMessage() for r in caplog.records if "mean of 5 steps" in r.getMessage()]
    assert [m.split(":")[0] for m in logged] == ["step 5", "step 10", "step 15", "step 20"]


def test_metric_for_best_and_early_stopping(tiny_model_dir, data_dir, tmp_path):
    # A learning rate too small to change anything: the metric never improves after the first evaluation.
    run = tmp_path / "run"
    result = train(config(tiny_model_dir, data_dir, run, epochs=5, learning_rate=1e-12, eval_steps=2,
                          early_stopping_patience=2, metric_for_best="accuracy"), progress=False)
    assert result.stopped_early and [r["step"] for r in records(run)] == [2, 4, 6]
    assert result.best_epoch == 0.2 and (run / "best").is_dir() and (run / "adapter").is_dir()


def test_an_unknown_metric_for_best_is_refused_before_any_work(tiny_model_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"'pearson' is not a metric of task sst2; it reports \['accuracy'\]"):
        train(config(tiny_model_dir, data_dir, run, metric_for_best="pearson"), progress=False)
    assert not run.exists()


def test_a_nan_metric_ranks_worst():
    assert better(0.1, float("nan"), True) and not better(float("nan"), 0.1, True)
    assert better(float("nan"), None, True) and better(-5.0, float("nan"), False)
    state = RunState("pearson")
    for step, value in enumerate([float("nan"), 0.2, float("nan"), 0.1, 0.3], start=1):
        state.position["global_step"] = step
        state.record({"pearson": value}, step, 0.0, 0.0)
        state.judge({"pearson": value})
    assert state.best["value"] == 0.3 and state.best["step"] == 5
    lower = RunState("eval_loss")
    assert not lower.greater


def test_gradient_checkpointing_recomputes_each_layer_in_the_backward_pass(tiny_model_dir):
    from roberta_lora.model.wrapper import LoraWrapperRoberta
    from roberta_lora.training.loop import enable_gradient_checkpointing

    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0).train()
    enable_gradient_checkpointing(model)
    calls = []
    model.roberta.encoder.layer[0].attention.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    model(ids, torch.ones_like(ids), labels=torch.tensor([1])).loss.backward()
    assert len(calls) == 2  # once forward, once recomputed in backward (frozen base, frozen embeddings)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_gradient_checkpointing_trains_the_same_adapter(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    plain = train(config(tiny_model_dir, data_dir, tmp_path / "plain", max_steps=4), progress=False)
    saved = train(config(tiny_model_dir, data_dir, tmp_path / "ckpt", max_steps=4, gradient_checkpointing=True),
                  progress=False)
    a = load_file(plain.run_dir / "adapter/adapter.safetensors")
    b = load_file(saved.run_dir / "adapter/adapter.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6  # recomputed activations, same dropout masks


def test_the_grad_scaler_is_saved_and_restored(tiny_model_dir, tmp_path):
    from roberta_lora.model.wrapper import LoraWrapperRoberta
    from roberta_lora.training.checkpoints import load_training_state, resume_from_checkpoint, save_checkpoint
    from roberta_lora.training.run_files import RunHistory

    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler.update(512.0)
    position = {"epoch": 1, "batches": 3, "global_step": 7, "since_best": 0}
    save_checkpoint(tmp_path, model, optimizer, scheduler, position, {"epoch": 1, "value": 0.5, "metrics": {}},
                    RunHistory(), scaler=scaler)

    class Accelerator:
        def __init__(self) -> None:
            self.scaler = torch.amp.GradScaler("cpu")

        def unwrap_model(self, m, keep_torch_compile=False):
            return m

    accelerator = Accelerator()
    state = load_training_state(tmp_path / "checkpoint")
    resumed = resume_from_checkpoint(tmp_path, state, accelerator, model, optimizer, scheduler)
    assert accelerator.scaler.get_scale() == 512.0 and accelerator.scaler.get_growth_interval() == 7
    assert (resumed["epoch"], resumed["batches"], resumed["global_step"]) == (1, 3, 7)


def test_what_trains_is_set_from_the_cli(tiny_model_dir, data_dir, tmp_path, capsys):
    """PEFT's bias="none" without a TOML file: --no-train-biases --no-train-layer-norms."""
    from safetensors.torch import load_file

    from roberta_lora.cli.main import main

    run = tmp_path / "run"
    argv = ["train", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--output-dir",
            str(run), "--max-steps", "2", "--batch-size", "8", "--no-progress", "--no-train-biases",
            "--no-train-layer-norms", "--max-grad-norm", "0.5", "--eval-steps", "1", "--save-steps", "1"]
    assert main(argv) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["train_biases"], saved["train_layer_norms"], saved["max_grad_norm"]) == (False, False, 0.5)
    encoder = [k for k in load_file(run / "adapter/adapter.safetensors") if not k.startswith("classifier.")]
    assert encoder and all("lora_" in k for k in encoder)  # only LoRA factors outside the head
    capsys.readouterr()
    assert main([*argv[:-6], "--max-grad-norm", "nan", "--output-dir", str(tmp_path / "other")]) == 2
    assert "max_grad_norm" in capsys.readouterr().err and not (tmp_path / "other").exists()

"""The training loop: one adapter for one task, on accelerate.

`train(config)` reads top to bottom: run folder, accelerator and seed, tokenizer and data,
model, optimizer and schedule, (resume), then per epoch: train, evaluate, write metrics,
keep the best adapter, checkpoint. The same code runs on a CPU, one GPU, or several
processes under `accelerate launch`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from roberta_lora.adapter_io import atomic_write_text, check_tensors
from roberta_lora.errors import ConfigError, RobertaLoraError
from roberta_lora.evaluation import evaluate_task
from roberta_lora.model import LoraWrapperRoberta
from roberta_lora.run_files import (
    STATE_NAME,
    RunHistory,
    load_training_state,
    plot_curves,
    restore_rng_state,
    rng_state,
    save_training_state,
    write_metrics_jsonl,
    write_model_card,
)
from roberta_lora.task_data import load_task_data, train_loader
from roberta_lora.tasks import TaskSpec, load_task
from roberta_lora.train_config import TrainConfig
from roberta_lora.warm_start import warm_start_from_adapter

logger = logging.getLogger(__name__)


class TrainingDivergedError(RobertaLoraError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, float]  # the last epoch's validation metrics
    best_metrics: dict[str, float]
    best_epoch: int
    trainable_parameters: int
    total_parameters: int
    seconds: float


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train one adapter as `config` says and write everything under its run folder."""
    config.validate()
    if config.quantize != "none" or config.optim != "adamw":
        from roberta_lora.quantization import check_qlora_options

        check_qlora_options(config.quantize, config.optim)  # CUDA / bitsandbytes missing: fail before any work
    if config.torch_compile:
        check_compile_backend(config.torch_compile_backend)
    spec = load_task(config.task)
    run_dir = prepare_run_dir(config, spec)
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum,
                                   config.torch_compile_backend if config.torch_compile else None)
    # Seed before anything draws random numbers (data order, LoRA A, head, dropout).
    set_seed(config.seed)
    log_handler = attach_log_file(run_dir, accelerator)
    try:
        return _train(config, spec, run_dir, accelerator, progress)
    finally:
        logging.getLogger("roberta_lora").removeHandler(log_handler)
        log_handler.close()


def _train(config: TrainConfig, spec: TaskSpec, run_dir: Path, accelerator: Accelerator, progress: bool) -> TrainResult:
    started = time.perf_counter()
    tokenizer = load_tokenizer(config.model)
    data = load_task_data(
        spec, tokenizer, config.data_dir, max_length=config.max_length, doc_stride=config.doc_stride,
        max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
        cache_dir=config.cache_dir,
    )
    model = build_model(config, spec)
    # Recorded in the adapter so `evaluate` and `predict` tokenize exactly as training did.
    model.adapter_config.max_length = config.max_length
    model.adapter_config.doc_stride = config.doc_stride
    if config.init_from:
        warm_start_from_adapter(model, Path(config.init_from), allow_base_mismatch=config.allow_base_mismatch)
    trainable, total = model.parameter_counts()
    logger.info("%s", model.trainable_parameters_summary())

    loader, sampler = train_loader(data.train, tokenizer, config.batch_size, config.seed, config.group_by_length,
                                   config.num_workers)
    optimizer = build_optimizer(model, config)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    epochs = min(config.epochs, math.ceil(total_steps / steps_per_epoch))
    # Not prepared by accelerate: we step it once per optimizer step ourselves, on every process.
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    write_run_config(run_dir, config, spec, total_steps, steps_per_epoch, accelerator)

    history, start_epoch, global_step, best = RunHistory(), 0, 0, {"epoch": -1, "value": None, "metrics": {}}
    if config.resume and not (run_dir / "checkpoint" / STATE_NAME).exists():
        logger.warning("%s has no finished epoch to resume from; starting from the beginning", run_dir)
    elif config.resume:
        start_epoch, global_step, best, history = resume_from_checkpoint(run_dir, accelerator, model, optimizer,
                                                                         scheduler)
    unwrapped: LoraWrapperRoberta = accelerator.unwrap_model(model, keep_torch_compile=False)
    metrics = epoch_metrics(history.epochs[-1]) if history.epochs else {}
    for epoch in range(start_epoch, epochs):
        # Through the prepared loader: accelerate re-sets the sampler's epoch from its own
        # iteration counter at every pass, and that counter restarts at 0 in a resumed process.
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        model.train()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not (progress and accelerator.is_local_main_process))
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if not torch.isfinite(loss.detach()):
                    kept = (f"the last good checkpoint (epoch {len(history.epochs)}) is kept in "
                            f"{run_dir / 'checkpoint'}" if history.epochs else "no epoch had finished, nothing was saved")
                    raise TrainingDivergedError(
                        f"loss became {loss.item()} at step {global_step + 1} (epoch {epoch + 1}); {kept}. "
                        "Lower --lr, use --mixed-precision no, or check the data"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                history.steps.append(global_step)
                history.learning_rates.append(scheduler.get_last_lr()[0])
                history.losses.append(accelerator.gather(loss.detach()).float().mean().item())
                scheduler.step()
                global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{history.losses[-1]:.4f}", lr=f"{history.learning_rates[-1]:.2e}")
                if global_step >= total_steps:
                    break
        bar.close()

        last_epoch = epoch + 1 == epochs or global_step >= total_steps
        # The last epoch's evaluation also writes the prediction files (eval/<split>/).
        metrics = evaluate_task(model, data, tokenizer, accelerator, config.eval_batch_size,
                                output_dir=run_dir / "eval" if last_epoch else None,
                                null_score_diff_threshold=config.null_score_diff_threshold,
                                task_type=unwrapped.task_type, progress=progress)
        epoch_losses = history.losses[-steps_per_epoch:]
        record = {"epoch": epoch + 1, "step": global_step, "train_loss": sum(epoch_losses) / max(len(epoch_losses), 1),
                  "learning_rate": scheduler.get_last_lr()[0], "elapsed_seconds": round(time.perf_counter() - started, 2),
                  **{f"eval_{k}": v for k, v in metrics.items()}}
        history.epochs.append(record)
        logger.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in metrics.items()})
        value = metrics[spec.main_metric]
        improved = best["value"] is None or value > best["value"]
        if improved:
            best = {"epoch": epoch + 1, "value": value, "metrics": metrics}
        if accelerator.is_main_process:
            write_metrics_jsonl(run_dir, history)
            if improved:
                save_adapter_with_card(unwrapped, run_dir / "best", spec, config, metrics, epoch + 1)
            plot_curves(run_dir / "curves.png", history, spec.main_metric)
            save_checkpoint(run_dir, unwrapped, optimizer, scheduler, epoch + 1, global_step, best, history)
        accelerator.wait_for_everyone()
        if global_step >= total_steps:
            break

    if accelerator.is_main_process:
        save_adapter_with_card(unwrapped, run_dir / "adapter", spec, config, metrics, len(history.epochs))
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, metrics, best["metrics"], best["epoch"], trainable, total,
                       time.perf_counter() - started)


# --------------------------------------------------------------------------------------- helpers
def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The validation metrics of one metrics.jsonl record (its eval_* fields, prefix removed)."""
    return {key.removeprefix("eval_"): value for key, value in record.items() if key.startswith("eval_")}


def prepare_run_dir(config: TrainConfig, spec: TaskSpec) -> Path:
    """The run folder, created and checked writable before any work (a read-only disk fails here)."""
    if config.output_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config.output_dir = str(Path("outputs") / spec.name / f"{stamp}-{config.method}")
    run_dir = Path(config.output_dir)
    # The state file is the checkpoint's commit point: a folder without it is an unfinished first epoch.
    if not config.resume and (run_dir / "checkpoint" / STATE_NAME).exists():
        raise ConfigError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose another --output-dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"cannot write to the output folder {run_dir} ({error}); choose a writable --output-dir") from None
    return run_dir


def make_accelerator(mixed_precision: str = "no", grad_accum: int = 1, compile_backend: str | None = None) -> Accelerator:
    """The one place an Accelerator is made (training and `evaluate_adapter`).

    Args:
        compile_backend: None, or a torch.compile backend ("inductor", ...): `prepare` then compiles the model.
    """
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("--mixed-precision fp16 needs a CUDA GPU; on CPU use --mixed-precision bf16 or no")
    dynamo_plugin = None
    if compile_backend is not None:  # train() has already run check_compile_backend, before any output
        from accelerate.utils import TorchDynamoPlugin

        dynamo_plugin = TorchDynamoPlugin(backend=compile_backend)
    # accelerate keeps one global state per process; a second run in the same process (train-all,
    # a notebook) may ask for other settings. The process group (PartialState) is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True without CUDA: `accelerate launch --multi_gpu --num_processes N` then runs N gloo
    # processes on the CPU (accelerate only picks its MULTI_CPU mode when told the run is on CPU).
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       cpu=not torch.cuda.is_available(), dynamo_plugin=dynamo_plugin)


def check_compile_backend(backend: str) -> None:
    """Fail before any work when torch.compile cannot run here (inductor on CPU builds C++ code)."""
    if backend == "inductor" and not torch.cuda.is_available():
        compilers = [os.environ.get("CXX") or "", "g++", "c++", "clang++"]
        if not any(name and shutil.which(name) for name in compilers):
            raise ConfigError(
                "--torch-compile with the inductor backend needs a C++ compiler on CPU (none of g++, c++, "
                "clang++ or $CXX was found); install one, or train without --torch-compile"
            )


def attach_log_file(run_dir: Path, accelerator: Accelerator) -> logging.Handler:
    handler: logging.Handler = logging.NullHandler()
    if accelerator.is_main_process:
        handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("roberta_lora")
    package_logger.addHandler(handler)
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    return handler


def load_tokenizer(model_id: str) -> Any:
    from roberta_lora.hub import hub_reachable

    if not Path(model_id).is_dir() and not hub_reachable():
        raise ConfigError(
            f"--model {model_id!r} is not a local directory and the Hugging Face hub is not reachable (offline?). "
            "Pass local paths: --model /path/to/roberta-base (config, weights and tokenizer files) and "
            "--data-dir /path/to/data (e.g. ../shared/data/glue)"
        )
    try:
        return AutoTokenizer.from_pretrained(model_id)
    except OSError as error:
        raise ConfigError(
            f"could not load a tokenizer from {model_id!r} ({str(error).splitlines()[0]}). Without network access "
            "pass a local checkpoint directory with --model (it must hold the tokenizer files too)"
        ) from None


def build_model(config: TrainConfig, spec: TaskSpec) -> LoraWrapperRoberta:
    task_type = "glue" if spec.kind != "squad" else f"squad_v{spec.squad_version}"
    extra: dict[str, Any] = {}
    if config.quantize != "none":
        extra["quantize"] = config.quantize  # handled (and checked for CUDA) by the model loader
    return LoraWrapperRoberta(
        task_type=task_type, num_classes=spec.num_labels if spec.kind != "squad" else None, model_id=config.model,
        lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        targets=config.targets, train_biases=config.train_biases, train_embeddings=config.train_embeddings,
        train_layer_norms=config.train_layer_norms, head=config.head, head_dropout=config.head_dropout,
        label_names=list(spec.label_names), seed=config.seed, attn_implementation=config.attn_implementation,
        task=spec.name, method=config.method, **extra,
    )


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (bitsandbytes' 8-bit variants on request)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optim != "adamw":
        from roberta_lora.quantization import build_optimizer as build_bnb_optimizer

        return build_bnb_optimizer(parameters, config.optim, config.learning_rate, config.weight_decay)
    # The fused kernel is a single launch per step on CUDA; on CPU the default is as fast.
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay,
                             fused=torch.cuda.is_available() or None)


def write_run_config(run_dir: Path, config: TrainConfig, spec: TaskSpec, total_steps: int, steps_per_epoch: int,
                     accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        import json

        resolved = {**asdict(config), "resolved": {
            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
            "warmup_steps": round(config.warmup_ratio * total_steps), "num_processes": accelerator.num_processes,
            "task_file": str(spec.source_path) if spec.source_path else None,
        }}
        atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")


def save_adapter_with_card(model: LoraWrapperRoberta, directory: Path, spec: TaskSpec, config: TrainConfig,
                           metrics: dict[str, float], epoch: int) -> None:
    model.save_adapter(directory, metrics=metrics)
    trainable, total = model.parameter_counts()
    write_model_card(directory, task=spec.name, description=spec.description, base_model=config.model,
                     metrics=metrics, config=asdict(config), trainable=trainable, total=total, epoch=epoch)


def save_checkpoint(run_dir: Path, model: LoraWrapperRoberta, optimizer: Any, scheduler: Any, epoch: int,
                    global_step: int, best: dict[str, Any], history: RunHistory) -> None:
    """Everything a resume needs after a finished epoch, in ONE atomically written file.

    training_state.pt holds the trained tensors, optimizer, scheduler and RNG state together, so a
    kill at any moment leaves either the previous epoch's checkpoint or this one, never a mix.
    checkpoint/adapter/ is a readable copy (written first); resuming never reads it.
    """
    checkpoint = run_dir / "checkpoint"
    model.save_adapter(checkpoint / "adapter")
    save_training_state(checkpoint, {
        "epoch": epoch, "global_step": global_step, "best": best, "history": asdict(history),
        "tensors": {name: t.detach().cpu().clone() for name, t in model.trainable_state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
    })


def resume_from_checkpoint(run_dir: Path, accelerator: Accelerator, model: Any, optimizer: Any,
                           scheduler: Any) -> tuple[int, int, dict[str, Any], RunHistory]:
    state = load_training_state(run_dir / "checkpoint")
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    live = dict(unwrapped.named_parameters())
    expected = {name: live[name] for name in unwrapped.trainable_state_dict()}
    check_tensors(state["tensors"], expected, str(run_dir / "checkpoint" / STATE_NAME))
    with torch.no_grad():
        for name, tensor in state["tensors"].items():
            live[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    logger.info("resumed %s after epoch %d (step %d)", run_dir, state["epoch"], state["global_step"])
    return state["epoch"], state["global_step"], state["best"], RunHistory(**state["history"])


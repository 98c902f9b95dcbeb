"""The training loop: one adapter for one task, on accelerate.

`train(config)` reads top to bottom: run folder, accelerator and seed, tokenizer and data,
model, optimizer and schedule, (resume), then per epoch: train, evaluate, write metrics,
keep the best adapter, checkpoint. The same code runs on a CPU, one GPU, or several
processes under `accelerate launch`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from roberta_lora.adapters.warm_start import warm_start_from_adapter
from roberta_lora.data.readers import check_local_files
from roberta_lora.data.task_data import load_task_data, train_loader
from roberta_lora.data.tasks import TaskSpec, load_task
from roberta_lora.data.tokenizer import (
    check_max_length,
    check_pair_structure,
    check_vocabulary,
    load_tokenizer,
)
from roberta_lora.errors import ConfigError, RobertaLoraError
from roberta_lora.evaluation.evaluate import evaluate_task
from roberta_lora.fileio import atomic_write_text
from roberta_lora.model.hub_card import card_front_matter
from roberta_lora.model.quantization import check_qlora_options
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.runtime import check_compile_backend, check_tracker, compile_model, make_accelerator
from roberta_lora.training.checkpoints import (
    STATE_NAME,
    load_training_state,
    restore_rng_state,
    resume_from_checkpoint,
    save_checkpoint,
)
from roberta_lora.training.config import (
    TrainConfig,
    absolute_local_paths,
    read_run_config,
    resume_differences,
)
from roberta_lora.training.optim import build_optimizer
from roberta_lora.training.progress import RunState, check_metric_for_best, check_metric_name
from roberta_lora.training.run_files import model_card, plot_curves, write_metrics_jsonl
from roberta_lora.training.rundir import check_run_folder, claim_run_folder

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
    stopped_early: bool = False


EpochCallback = Callable[[int, dict[str, float]], None]


def train(config: TrainConfig, progress: bool = True, on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train one adapter as `config` says and write everything under its run folder.

    Everything that can be checked is checked before the run folder is touched: settings, the run
    folder itself (see `training.rundir`), a resumed run's saved settings, the model folder, its
    tokenizer, the sequence length and the data files.

    Args:
        on_epoch_end: called with (epoch, validation metrics) after each epoch's checkpoint is written;
            an exception it raises stops the run there (a sweep's pruner does this), resumable.
    """
    config.validate()
    absolute_local_paths(config)
    check_qlora_options(config.quantize, config.optim)  # CUDA / bitsandbytes missing: fail before any work
    if config.torch_compile:
        check_compile_backend(config.torch_compile_backend)
    spec = load_task(config.task)
    check_metric_for_best(config.metric_for_best, spec)
    if config.output_dir is None:
        config.output_dir = str(Path("outputs") / spec.name / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.method}")
    run_dir = Path(config.output_dir)
    check_run_folder(run_dir, config.resume, config.overwrite)
    if config.resume and (run_dir / "config.json").is_file():
        differences = resume_differences(read_run_config(run_dir), config)
        if differences:
            raise ConfigError(f"--resume continues {run_dir} with the settings it was started with; these differ: "
                              + "; ".join(differences) + ". Leave them out, or start a new run with another --output-dir")
    state_file = run_dir / "checkpoint" / STATE_NAME
    resume_state = load_training_state(run_dir / "checkpoint") if config.resume and state_file.is_file() else None
    tokenizer, model = preflight(config, spec)
    check_tracker(config.report_to)
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum,  # refuses before any file is written
                                   log_with=config.report_to, project_dir=run_dir)
    lock = claim_run_folder(run_dir, config.overwrite) if accelerator.is_main_process else None
    log_handler = attach_log_file(run_dir, accelerator)
    try:
        return _train(config, spec, run_dir, accelerator, progress, tokenizer, model, resume_state, on_epoch_end)
    finally:
        logging.getLogger("roberta_lora").removeHandler(log_handler)
        log_handler.close()
        if lock is not None:
            lock.release()


def preflight(config: TrainConfig, spec: TaskSpec) -> tuple[Any, LoraWrapperRoberta]:
    """The tokenizer and the model, loaded and checked against the task and the data files before the
    run folder is written (a bad model folder or data path costs nothing on disk)."""
    tokenizer = load_tokenizer(config.model)
    if len(spec.text_columns) == 2 or spec.kind == "squad":
        check_pair_structure(tokenizer, config.model)
    if config.data_dir is not None:
        check_local_files(spec, config.data_dir)
    # Seed before anything draws random numbers (LoRA A, head, then data order and dropout).
    set_seed(config.seed)
    model = build_model(config, spec)
    check_max_length(config.max_length or spec.max_length, model.config, config.model)
    check_vocabulary(tokenizer, model.config, config.model)
    return tokenizer, model


def _train(config: TrainConfig, spec: TaskSpec, run_dir: Path, accelerator: Accelerator, progress: bool,
           tokenizer: Any, model: LoraWrapperRoberta, resume_state: dict[str, Any] | None,
           on_epoch_end: EpochCallback | None) -> TrainResult:
    started = time.perf_counter()
    data = load_task_data(
        spec, tokenizer, config.data_dir, max_length=config.max_length, doc_stride=config.doc_stride,
        max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
        cache_dir=config.cache_dir,
    )
    # Recorded in the adapter so `evaluate` and `predict` tokenize exactly as training did.
    model.adapter_config.max_length = config.max_length
    model.adapter_config.doc_stride = config.doc_stride
    if config.init_from:
        warm_start_from_adapter(model, Path(config.init_from), allow_base_mismatch=config.allow_base_mismatch)
    trainable, total = model.parameter_counts()
    logger.info("%s", model.trainable_parameters_summary())

    loader, sampler = train_loader(data.train, tokenizer, config.batch_size, config.seed, config.group_by_length,
                                   config.num_workers)
    optimizer = build_optimizer(model, config.optim, config.learning_rate, config.weight_decay,
                                config.loraplus_lr_ratio)
    unwrapped = model  # what is saved: never the compiled or distributed wrapper
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if config.torch_compile:
        model = compile_model(model, config.torch_compile_backend)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    # Steps are the unit: --max-steps sets the schedule and overrides --epochs, as in transformers' Trainer.
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    # Not prepared by accelerate: we step it once per optimizer step ourselves, on every process.
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    if config.report_to != "none":  # trackers get the run's settings (flat, numbers and strings only)
        accelerator.init_trackers(run_dir.name, config={k: v for k, v in asdict(config).items()
                                                        if isinstance(v, (int, float, str, bool))})
    if not config.resume:  # a resumed run keeps the config.json it was started with
        write_run_config(run_dir, config, spec, total_steps, steps_per_epoch, accelerator)

    run = RunState(metric=config.metric_for_best or spec.main_metric)
    saved_rng = None
    if config.resume and resume_state is None:
        logger.warning("%s has no checkpoint to resume from; starting from the beginning", run_dir)
    elif resume_state is not None:
        resumed = resume_from_checkpoint(run_dir, resume_state, accelerator, model, optimizer, scheduler)
        run.restore(resumed)
        saved_rng = resumed["rng"]
    scaler = getattr(accelerator, "scaler", None)
    metrics = epoch_metrics(run.history.epochs[-1]) if run.history.epochs else {}

    def evaluate(final: bool) -> dict[str, float]:
        """Validation metrics now; a record in metrics.jsonl; best/ when they are the best so far."""
        found = evaluate_task(model, data, tokenizer, accelerator, config.eval_batch_size,
                              output_dir=run_dir / "eval" if final else None,
                              null_score_diff_threshold=config.null_score_diff_threshold,
                              task_type=unwrapped.task_type, progress=progress)
        check_metric_name(run.metric, found)
        epoch = run.position["epoch"] + run.position["batches"] / len(loader)
        record = run.record(found, round(epoch, 4), scheduler.get_last_lr()[0], time.perf_counter() - started)
        logger.info("step %d (epoch %.2f): %s", run.global_step, epoch, {k: round(v, 4) for k, v in found.items()})
        if config.report_to != "none":
            accelerator.log({"train/epoch_loss": record["train_loss"], **{f"eval/{k}": v for k, v in found.items()}},
                            step=run.global_step)
        improved = run.judge(found)
        if accelerator.is_main_process:
            write_metrics_jsonl(run_dir, run.history)
            if improved:
                save_adapter_with_card(unwrapped, run_dir / "best", spec, config, found, record["epoch"])
            plot_curves(run_dir / "curves.png", run.history, run.metric)
        model.train()
        return found

    def checkpoint() -> None:
        if accelerator.is_main_process:
            save_checkpoint(run_dir, unwrapped, optimizer, scheduler, run.checkpoint_position(), run.best,
                            run.history, scaler=scaler, keep=config.save_total_limit, previous_step=run.saved_step)
        run.saved_step = run.global_step
        accelerator.wait_for_everyone()

    stop = run.global_step >= total_steps
    for epoch in range(run.position["epoch"], epochs):
        if stop:
            break
        # Through the prepared loader: accelerate re-sets the sampler's epoch from its own
        # iteration counter at every pass, and that counter restarts at 0 in a resumed process.
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        model.train()
        skip = run.position["batches"] if epoch == run.position["epoch"] else 0
        run.start_epoch(epoch, skip)
        # The RNG state goes back exactly where the interrupted run saved it: before this epoch's iterator is
        # made when it saved at an epoch's end; after the iterator is made and the trained batches are
        # skipped when it saved within the epoch (making an iterator draws from the global RNG).
        if saved_rng is not None and skip == 0:
            restore_rng_state(saved_rng)
            saved_rng = None
        batches = iter(loader)
        for _ in range(skip):  # the batches the interrupted run had already trained on, in the same order
            next(batches)
        if saved_rng is not None:
            restore_rng_state(saved_rng)
            saved_rng = None
        bar = tqdm(total=steps_per_epoch, initial=math.ceil(skip / config.grad_accum),
                   desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and accelerator.is_local_main_process))
        # This optimizer step's micro-batch losses, summed on the device: no GPU-to-CPU sync per micro-batch.
        step_loss, micro_batches = torch.zeros((), device=accelerator.device), 0
        for batch in batches:
            run.position["batches"] += 1
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                step_loss += loss.detach().float()
                micro_batches += 1
                if accelerator.sync_gradients:
                    # One gather per optimizer step, on every process alike: all of them see the same mean
                    # loss, so a non-finite loss on any one stops them all here (none waits in a collective).
                    mean_loss = accelerator.gather(step_loss / micro_batches).float().mean().item()
                    if not math.isfinite(mean_loss):
                        raise TrainingDivergedError(diverged_message(mean_loss, run.global_step + 1, epoch + 1,
                                                                     run_dir, run.saved_step))
                    if config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            run.step(mean_loss, scheduler.get_last_lr()[0])  # the mean over the step's micro-batches (and processes)
            step_loss.zero_()
            micro_batches = 0
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{run.history.losses[-1]:.4f}", lr=f"{run.history.learning_rates[-1]:.2e}")
            log_step(config, accelerator, run)
            stop = run.global_step >= total_steps
            if config.eval_steps and (run.global_step % config.eval_steps == 0 or stop):
                metrics = evaluate(final=stop)
                stop = stop or run.patience_spent(config.early_stopping_patience)
                if not config.save_steps:
                    checkpoint()
            if config.save_steps and (run.global_step % config.save_steps == 0 or stop):
                checkpoint()
            if stop:
                break
        bar.close()
        if stop and config.eval_steps:
            break
        # The end of an epoch (or of --max-steps within it): evaluated unless --eval-steps decides.
        if not config.eval_steps:
            run.position.update(epoch=epoch + 1, batches=0)
            metrics = evaluate(final=stop or epoch + 1 == epochs)
            stop = stop or run.patience_spent(config.early_stopping_patience)
            if not config.save_steps or stop:
                checkpoint()
        else:
            run.position.update(epoch=epoch + 1, batches=0)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)

    if accelerator.is_main_process:
        save_adapter_with_card(unwrapped, run_dir / "adapter", spec, config, metrics,
                               run.history.epochs[-1]["epoch"] if run.history.epochs else 0)
    accelerator.wait_for_everyone()
    if config.report_to != "none":
        accelerator.end_training()
    return TrainResult(run_dir, metrics, run.best["metrics"], run.best["epoch"], trainable, total,
                       time.perf_counter() - started, stopped_early=run.stopped_early)


# --------------------------------------------------------------------------------------- helpers
def diverged_message(loss: float, step: int, epoch: int, run_dir: Path, saved_step: int | None) -> str:
    kept = (f"the last good checkpoint (step {saved_step}) is kept in {run_dir / 'checkpoint'}"
            if saved_step else "no checkpoint had been written, nothing was saved")
    return (f"loss became {loss} at step {step} (epoch {epoch}) (the mean over the step's micro-batches and "
            f"processes; every process stops here); {kept}. Lower --lr, use --mixed-precision no, or check the data")


def log_step(config: TrainConfig, accelerator: Accelerator, run: RunState) -> None:
    """Trackers get every step's loss, or with --logging-steps N the mean of each N steps (also in train.log)."""
    every = config.logging_steps
    if every is not None and run.global_step % every != 0:
        return
    losses = run.history.losses[-(every or 1):]
    loss, rate = sum(losses) / len(losses), run.history.learning_rates[-1]
    if every is not None:
        logger.info("step %d: loss %.4f (mean of %d steps), learning rate %.3e", run.global_step, loss, len(losses),
                    rate)
    if config.report_to != "none":
        accelerator.log({"train/loss": loss, "train/learning_rate": rate}, step=run.global_step)


def enable_gradient_checkpointing(model: LoraWrapperRoberta) -> None:
    """Recompute each encoder layer's activations in the backward pass (transformers' own checkpointing,
    non-reentrant: it needs no input that requires grad, so it works with a frozen base and frozen
    embeddings; dropout masks are replayed exactly)."""
    encoder = model.roberta
    if not getattr(encoder, "supports_gradient_checkpointing", False):
        raise ConfigError(f"--gradient-checkpointing: the {type(encoder).__name__} encoder does not support it; "
                          "leave the flag out")
    if hasattr(encoder, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The validation metrics of one metrics.jsonl record (its eval_* fields, prefix removed)."""
    return {key.removeprefix("eval_"): value for key, value in record.items() if key.startswith("eval_")}


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
        task=spec.name, method=config.method, use_rslora=config.use_rslora, use_dora=config.use_dora,
        init_lora_weights=config.init_lora_weights, layers_to_transform=config.layer_indexes(), **extra,
    )


def write_run_config(run_dir: Path, config: TrainConfig, spec: TaskSpec, total_steps: int, steps_per_epoch: int,
                     accelerator: Accelerator) -> None:
    if accelerator.is_main_process:
        resolved = {**asdict(config), "resolved": {
            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
            "warmup_steps": round(config.warmup_ratio * total_steps), "num_processes": accelerator.num_processes,
            "task_file": str(spec.source_path) if spec.source_path else None,
        }}
        atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")


def save_adapter_with_card(model: LoraWrapperRoberta, directory: Path, spec: TaskSpec, config: TrainConfig,
                           metrics: dict[str, float], epoch: float) -> None:
    """The adapter folder with its README.md card, replaced as one unit (a kill never mixes the two)."""
    trainable, total = model.parameter_counts()
    model.adapter_config.max_eval_samples = config.max_eval_samples  # the rows `metrics` are on
    saved = replace(model.adapter_config, metrics=dict(metrics))  # the card reads no tensors: no portable copy
    card = model_card(task=spec.name, description=spec.description, base_model=config.model, metrics=metrics,
                      config=asdict(config), trainable=trainable, total=total, epoch=epoch,
                      front_matter=card_front_matter(saved), squad=spec.kind == "squad")
    model.save_adapter(directory, metrics=metrics, extra_files={"README.md": card})

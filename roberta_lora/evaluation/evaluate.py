"""Evaluate a model on a task's validation split(s) with the official metrics.

Metric names: the first validation split reports plain names ("accuracy", "f1", ...); further
splits add the split's suffix ("accuracy_mismatched" for MNLI's validation_mismatched).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from roberta_lora.data.readers import check_local_files
from roberta_lora.data.task_data import EvalSplit, TaskData, eval_loader, load_task_data
from roberta_lora.data.tasks import TaskSpec, load_task
from roberta_lora.data.tokenizer import check_vocabulary, load_tokenizer
from roberta_lora.errors import ConfigError
from roberta_lora.evaluation.metrics import compute_metrics
from roberta_lora.evaluation.squad_metrics import (
    examples_to_squad_dataset,
    squad_v1_metrics,
    squad_v2_metrics,
)
from roberta_lora.evaluation.squad_postprocess import postprocess_predictions
from roberta_lora.fileio import atomic_write_text
from roberta_lora.model.config import AdapterConfig, read_adapter_config
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.runtime import make_accelerator, resolve_device, resolve_dtype

PAD_LOGIT = -1e4  # fills logits beyond a window's length when gathering across processes


def metric_suffix(spec: TaskSpec, split: str) -> str:
    """"" for the first validation split, "_mismatched" for MNLI's second, and so on."""
    if split == spec.validation_splits[0]:
        return ""
    return "_" + split.removeprefix("validation_")


@torch.inference_mode()
def run_model(model: torch.nn.Module, split: EvalSplit, tokenizer: Any, accelerator: Any, batch_size: int,
              task_type: str, progress: bool = True, device: torch.device | None = None) -> dict[str, np.ndarray]:
    """Model outputs for every row of `split.features`, in dataset order (whatever the batching).

    `device`: where the model is, when not on the accelerator's device (`evaluate --device cpu` on a GPU
    machine); batches go there. Outputs come back as float32 whatever the model's dtype.
    """
    loader = accelerator.prepare(eval_loader(split.features, tokenizer, batch_size))
    model.eval()
    rows, outputs = [], {}
    bar = tqdm(loader, desc=f"eval {split.name}", disable=not (progress and accelerator.is_local_main_process),
               leave=False)
    for batch in bar:
        row_index = batch.pop("row_index")
        batch.pop("labels", None)
        batch.pop("start_positions", None)
        batch.pop("end_positions", None)
        if device is not None:
            batch = {name: value.to(device) for name, value in batch.items()}
        out = model(**batch)
        if task_type == "glue":
            produced = {"logits": out.logits.float()}
        else:
            # Pad every process's windows to one length so they can be gathered.
            produced = {
                name: accelerator.pad_across_processes(getattr(out, name).float(), dim=1, pad_index=PAD_LOGIT)
                for name in ("start_logits", "end_logits")
            }
        gathered_rows, gathered = accelerator.gather_for_metrics((row_index, produced))
        rows.append(gathered_rows.cpu())
        for name, value in gathered.items():
            outputs.setdefault(name, []).append(value.cpu().numpy())
    order = np.argsort(torch.cat(rows).numpy(), kind="stable")
    result = {}
    for name, parts in outputs.items():
        width = max(p.shape[1] for p in parts) if parts[0].ndim == 2 else None
        padded = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=PAD_LOGIT) for p in parts]
        result[name] = np.concatenate(padded)[order]
    return result


def score_split(spec: TaskSpec, split: EvalSplit, outputs: dict[str, np.ndarray], output_dir: Path | None = None,
                null_score_diff_threshold: float = 0.0) -> dict[str, float]:
    """Metrics (unsuffixed) of one split; writes prediction files when output_dir is given."""
    if spec.kind == "squad":
        answers = postprocess_predictions(
            split.examples, split.features, outputs["start_logits"], outputs["end_logits"],
            version_2=spec.squad_version == 2, null_score_diff_threshold=null_score_diff_threshold,
            output_dir=output_dir,
        )
        dataset = examples_to_squad_dataset(split.examples)
        if spec.squad_version == 2:
            # Our answers already apply the threshold; the null odds still give best_exact / best_f1.
            metrics = squad_v2_metrics(dataset, answers.predictions, na_probs=answers.null_odds,
                                       na_prob_thresh=float("inf"))
        else:
            metrics = squad_v1_metrics(dataset, answers.predictions)
        return {k: float(v) for k, v in metrics.items()}
    logits = outputs["logits"]
    references = np.asarray(split.features["labels"])
    predictions = logits[:, 0] if spec.kind == "regression" else logits.argmax(axis=-1)
    metrics = compute_metrics(spec.metrics, predictions, references)
    if output_dir is not None:
        lines = [
            json.dumps({"index": i, "prediction": float(p) if spec.kind == "regression" else int(p),
                        **({} if spec.kind == "regression" else {"label": spec.label_names[int(p)]})})
            for i, p in enumerate(predictions)
        ]
        atomic_write_text(Path(output_dir) / "predictions.jsonl", "\n".join(lines) + "\n")
    return metrics


def evaluate_task(model: torch.nn.Module, data: TaskData, tokenizer: Any, accelerator: Any, batch_size: int,
                  output_dir: Path | None = None, null_score_diff_threshold: float = 0.0,
                  task_type: str = "glue", progress: bool = True, device: torch.device | None = None) -> dict[str, float]:
    """Every validation split of `data`, metrics merged into one dict (see `metric_suffix`); `device` as in
    `run_model`."""
    results: dict[str, float] = {}
    for split in data.eval_splits:
        outputs = run_model(model, split, tokenizer, accelerator, batch_size, task_type, progress, device)
        split_dir = Path(output_dir) / split.name if output_dir is not None and accelerator.is_main_process else None
        metrics = score_split(data.spec, split, outputs, split_dir, null_score_diff_threshold)
        suffix = metric_suffix(data.spec, split.name)
        results.update({f"{name}{suffix}": value for name, value in metrics.items()})
    return results


def evaluate_adapter(adapter_dir: str | Path, data_dir: str | Path | None = None, model_id: str | None = None,
                     task: str | None = None, batch_size: int = 64, max_eval_samples: int | None = None,
                     output_dir: str | Path | None = None, allow_base_mismatch: bool = False,
                     null_score_diff_threshold: float = 0.0, cache_dir: str | Path | None = None,
                     progress: bool = True, device: str | torch.device = "auto",
                     dtype: str = "float32") -> dict[str, float]:
    """Evaluate a saved adapter on its task's validation split(s); the same code the trainer uses.

    Args:
        adapter_dir: the adapter folder. task: task name or TOML (default: the one recorded in the adapter).
        data_dir: local data root (None: the hub). model_id: base model (default: the adapter's).
        output_dir: where prediction files go (None: not written).
        device: "auto" (the accelerator's device: a CUDA GPU when there is one, each process its own under
            `accelerate launch`), "cpu", "cuda" or "cuda:N" (`runtime.resolve_device`).
        dtype: the weights' dtype, "float32", "bfloat16" or "float16" (CUDA only); metrics are computed
            from float32 copies of the outputs.

    Raises:
        ConfigError: a batch size or sample count below 1, a device or dtype that is unknown or not available
            here (checked before anything loads), or a task the adapter was not trained for.
    """
    problems = [f"{name}={value!r} (expected an integer >= 1)" for name, value in
                (("batch_size", batch_size), ("max_eval_samples", max_eval_samples))
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1)]
    if problems:
        raise ConfigError("cannot evaluate: " + "; ".join(problems))
    weights = resolve_dtype(dtype, resolve_device(str(device)))
    # The model is not `prepare`d: accelerate would wrap its forward in the process's autocast (bf16 after
    # a bf16 training in this process); evaluation computes in the model's own precision, `dtype`.
    accelerator = make_accelerator(mixed_precision=None)
    target = evaluation_device(str(device), accelerator)
    config, _ = read_adapter_config(Path(adapter_dir))
    task = task or config.task
    if task is None:
        raise ConfigError(f"adapter {adapter_dir} records no task; pass --task NAME")
    spec = load_task(task)
    check_task_fits(spec, config, adapter_dir)
    if data_dir is not None:
        check_local_files(spec, data_dir, spec.validation_splits)
    model = LoraWrapperRoberta.from_adapter(adapter_dir, model_id=model_id, allow_base_mismatch=allow_base_mismatch)
    tokenizer = load_tokenizer(str(model_id or config.base_model))
    check_vocabulary(tokenizer, model.config, str(model_id or config.base_model))
    data = load_task_data(spec, tokenizer, data_dir, with_train=False, max_length=config.max_length,
                          doc_stride=config.doc_stride, max_eval_samples=max_eval_samples, cache_dir=cache_dir)
    model = model.to(device=target, dtype=weights)
    return evaluate_task(model, data, tokenizer, accelerator, batch_size,
                         output_dir=Path(output_dir) if output_dir else None,
                         null_score_diff_threshold=null_score_diff_threshold, task_type=config.task_type,
                         progress=progress, device=None if target == accelerator.device else target)


def evaluation_device(spec: str, accelerator: Any) -> torch.device:
    """The device `evaluate_adapter` runs on: the accelerator's for "auto", else `spec` (`runtime.resolve_device`).

    Raises:
        ConfigError: an explicit device in a run of several processes, where each process has its own.
    """
    if spec.strip().lower() == "auto":
        return accelerator.device
    if accelerator.num_processes > 1:
        raise ConfigError(f"--device {spec} with {accelerator.num_processes} processes: accelerate gives each "
                          f"process its own device ({accelerator.device} here); leave --device auto under "
                          "`accelerate launch`")
    return resolve_device(spec)


def check_task_fits(spec: TaskSpec, config: AdapterConfig, adapter_dir: str | Path) -> None:
    """Refuse to score an adapter on a task it was not trained for: another head type, number of classes
    or label names (an SST-2 adapter's "positive" is not RTE's "not_entailment")."""
    task_type = f"squad_v{spec.squad_version}" if spec.kind == "squad" else "glue"
    problems = []
    if (task_type == "glue") != (config.task_type == "glue"):
        problems.append(f"it is a {config.task_type} adapter and {spec.name} a {task_type} task")
    elif task_type == "glue" and config.num_classes != spec.num_labels:
        problems.append(f"it has {config.num_classes} outputs and {spec.name} {spec.num_labels}")
    elif task_type == "glue" and config.label_names and list(config.label_names) != list(spec.label_names):
        problems.append(f"its labels are {config.label_names}, {spec.name}'s {list(spec.label_names)}")
    if problems:
        trained = f" (trained on {config.task})" if config.task else ""
        raise ConfigError(f"adapter {adapter_dir}{trained} does not fit task {spec.name}: {problems[0]}; "
                          f"pass --task {config.task or '<the task it was trained on>'}")

"""LoRA variants on real GLUE data: roberta-lora's rsLoRA, DoRA, gaussian, PiSSA and OLoRA
initialisation and LoRA+ against its plain LoRA,
and each against PEFT's implementation of the same variant, on the packaged pretrained all-MiniLM-L6-v2.

Every run trains the same fixed random subset of a task's training split (the same rows for every method
and seed), for the same number of optimizer steps, batch size, learning rate and schedule (linear warm-up,
then linear decay to 0), and is scored on the task's full validation split with the task's main metric
(roberta_lora.evaluation.metrics for both sides). Methods:

- ours:  lora-light (plain LoRA, the tutorial's light head), lora (plain LoRA, "roberta" head), rslora, dora,
         gaussian, pissa, olora, loraplus (LoRA+, B's learning rate x16): `roberta_lora.training.loop.train(TrainConfig(...))`.
- PEFT:  peft-lora, peft-rslora, peft-dora, peft-gaussian, peft-pissa, peft-olora, peft-loraplus: `AutoModelForSequenceClassification`
         (BertForSequenceClassification for MiniLM) + `peft.get_peft_model`, trained by transformers' `Trainer`
         (LoRA+ through `peft.optimizers.create_loraplus_optimizer`).

One JSON line per (method, task, seed) is appended to the records file as soon as the run ends; a run whose
record (with the same settings) is already there is skipped, so a part can be restarted, or several parts run
one after another (or side by side), and `--report` writes the table and the plot from whatever is there.

    python benchmarks/variants.py --threads 1                       # 5 tasks x 15 methods x 3 seeds
    python benchmarks/variants.py --methods lora,peft-lora --tasks sst2,rte --no-report   # one part
    python benchmarks/variants.py --no-report --claims /tmp/claims &  # twice: two processes share one queue
    python benchmarks/variants.py --report                          # table + plot from results/variants.jsonl
    python benchmarks/variants.py --quick                           # SST-2, seed 0, 8 steps, 64 rows (to /tmp)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    RESULTS_DIR,
    SHARED_GLUE,
    command_line,
    load_average,
    machine_description,
    markdown_table,
    set_threads,
)
from torch.optim.optimizer import register_optimizer_step_post_hook
from tqdm.auto import tqdm

TASKS = ("sst2", "rte", "mrpc", "stsb", "cola")


@dataclass(frozen=True)
class Method:
    """One row of the table: which side trains it and how its LoRA differs from plain LoRA."""

    name: str
    side: str  # "ours" | "peft"
    head: str = "roberta"  # ours only; PEFT always has BertForSequenceClassification's pooler + classifier
    use_rslora: bool = False
    use_dora: bool = False
    init: str = "kaiming"  # kaiming | gaussian (A random, B zero) | pissa | olora (both from the base weight)
    loraplus: bool = False


# Run order: the comparisons that matter most first (plain LoRA and DoRA, ours and PEFT's), then the rest.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lora", "ours"),
    Method("peft-lora", "peft"),
    Method("dora", "ours", use_dora=True),
    Method("peft-dora", "peft", use_dora=True),
    Method("lora-light", "ours", head="light"),
    Method("rslora", "ours", use_rslora=True),
    Method("peft-rslora", "peft", use_rslora=True),
    Method("gaussian", "ours", init="gaussian"),
    Method("peft-gaussian", "peft", init="gaussian"),
    Method("pissa", "ours", init="pissa"),
    Method("peft-pissa", "peft", init="pissa"),
    Method("olora", "ours", init="olora"),
    Method("peft-olora", "peft", init="olora"),
    Method("loraplus", "ours", loraplus=True),
    Method("peft-loraplus", "peft", loraplus=True),
)}
# Ours -> PEFT's implementation of the same variant.
ANCHORS = {"lora": "peft-lora", "rslora": "peft-rslora", "dora": "peft-dora", "gaussian": "peft-gaussian",
           "pissa": "peft-pissa", "olora": "peft-olora", "loraplus": "peft-loraplus"}
TASK_TITLES = {"sst2": "SST-2", "rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "cola": "CoLA"}
# Settings that must be equal for a stored record to count as the same run.
SETTING_KEYS = ("model", "steps", "train_samples", "subset_seed", "eval_samples", "batch_size", "eval_batch_size",
                "max_length", "lr", "warmup_ratio", "rank", "alpha", "dropout", "loraplus_ratio")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_GLUE, help="a GLUE folder (SST-2/, RTE/, ...)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2",
                        help="a packaged model name or a local BERT-family checkpoint folder")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list from {list(TASKS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {list(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=80,
                        help="optimizer steps of every run (80 x 16 examples: what fits 225 runs in ~3 h on 2 cores)")
    parser.add_argument("--train-samples", type=int, default=2000,
                        help="rows drawn once per task (seeded by --subset-seed), the same for every method and seed")
    parser.add_argument("--subset-seed", type=int, default=1234, help="draws the training subset; not a run seed")
    parser.add_argument("--eval-samples", type=int, default=None, help="first N validation rows (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW, no weight decay)")
    parser.add_argument("--warmup-ratio", type=float, default=0.06, help="linear warm-up share, then linear decay")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout")
    parser.add_argument("--loraplus-ratio", type=float, default=16.0, help="LoRA+: B's learning rate / lr")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--records", type=Path, default=None, help="raw per-run JSON lines (default results/variants.jsonl)")
    parser.add_argument("--output", type=Path, default=None, help="the markdown table (default results/variants.md)")
    parser.add_argument("--plot", type=Path, default=None, help="the PNG (default results/variants.png)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--claims", type=Path, default=None,
                        help="a folder shared by processes run side by side: each takes the next run nobody holds")
    parser.add_argument("--report", action="store_true", help="only write the table and the plot from --records")
    parser.add_argument("--no-report", action="store_true", help="only run (and append records)")
    parser.add_argument("--quick", action="store_true",
                        help="SST-2, seed 0, 8 steps, 64 training and 64 validation rows; outputs under /tmp")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.steps, args.train_samples, args.eval_samples = "sst2", "0", 8, 64, 64
        quick = Path(tempfile.gettempdir()) / "roberta-lora-variants-quick"
        args.records = args.records or quick / "variants.jsonl"
        args.output = args.output or quick / "variants.md"
        args.plot = args.plot or quick / "variants.png"
    args.records = args.records or RESULTS_DIR / "variants.jsonl"
    args.output = args.output or RESULTS_DIR / "variants.md"
    args.plot = args.plot or RESULTS_DIR / "variants.png"
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    problems = [f"unknown task {t!r} (expected names from {list(TASKS)})" for t in args.tasks if t not in TASKS]
    problems += [f"unknown method {m!r} (expected names from {list(METHODS)})" for m in args.methods if m not in METHODS]
    if args.report and args.no_report:
        problems.append("--report and --no-report together: pass one of them")
    if problems:
        parser.error("; ".join(problems))
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "steps": args.steps, "train_samples": args.train_samples,
            "subset_seed": args.subset_seed, "eval_samples": args.eval_samples, "batch_size": args.batch_size,
            "eval_batch_size": args.eval_batch_size, "max_length": args.max_length, "lr": args.lr,
            "warmup_ratio": args.warmup_ratio, "rank": args.rank, "alpha": args.alpha, "dropout": args.dropout,
            "loraplus_ratio": args.loraplus_ratio}


# ----------------------------------------------------------------------------- data
def write_subset(task: str, source: Path, destination: Path, train_samples: int, subset_seed: int) -> dict[str, Any]:
    """`destination` as a GLUE folder for `task`: a fixed random subset of the training rows (the file's own
    lines, header kept, in their original order) and the validation file unchanged.

    The draw depends only on (subset_seed, the number of rows), never on a run's seed.
    """
    from roberta_lora.data.glue_files import GLUE_LAYOUTS
    from roberta_lora.data.tasks import load_task

    spec = load_task(task)
    has_header = GLUE_LAYOUTS[spec.glue_layout].num_columns is None  # CoLA's files have none
    train_path = spec.local_files["train"]
    lines = (source / train_path).read_bytes().splitlines(keepends=True)
    header, rows = (lines[:1], lines[1:]) if has_header else ([], lines)
    take = min(train_samples, len(rows))
    chosen = sorted(np.random.default_rng(subset_seed).choice(len(rows), size=take, replace=False).tolist())
    subset = b"".join(header + [rows[i] for i in chosen])
    (destination / train_path).parent.mkdir(parents=True, exist_ok=True)
    (destination / train_path).write_bytes(subset)
    for split in spec.validation_splits:
        shutil.copyfile(source / spec.local_files[split], destination / spec.local_files[split])
    return {"train_rows": take, "train_rows_available": len(rows),
            "train_sha256": hashlib.sha256(subset).hexdigest()[:16]}


# ----------------------------------------------------------------------------- step clock
class StepClock:
    """Wall and CPU time at every optimizer step, from torch's global post-step hook: the same clock for
    roberta-lora's loop (accelerate) and for the Trainer, measured around exactly the optimizer steps
    (forward, backward, clipping, step, next batch) and nothing before or after them."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> StepClock:
        def tick(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            if type(optimizer).__name__ != "AcceleratedOptimizer":  # it wraps the real one: count that once
                self.wall.append(time.perf_counter())
                self.cpu.append(time.process_time())

        self.handle = register_optimizer_step_post_hook(tick)
        return self

    def __exit__(self, *_: Any) -> None:
        self.handle.remove()

    def summary(self) -> dict[str, Any]:
        wall, cpu = np.diff(self.wall), np.diff(self.cpu)
        return {"steps_seen": len(self.wall),
                "step_wall_median": float(np.median(wall)) if len(wall) else float("nan"),
                "step_cpu_median": float(np.median(cpu)) if len(cpu) else float("nan"),
                "train_wall": float(self.wall[-1] - self.wall[0]) if len(wall) else float("nan"),
                "train_cpu": float(self.cpu[-1] - self.cpu[0]) if len(cpu) else float("nan")}


# ----------------------------------------------------------------------------- the two sides
def run_ours(method: Method, task: str, seed: int, data_dir: Path, run_dir: Path, cache: Path,
             args: argparse.Namespace) -> dict[str, Any]:
    from roberta_lora.training.config import TrainConfig
    from roberta_lora.training.loop import train

    config = TrainConfig(
        task=task, model=args.model, data_dir=str(data_dir), output_dir=str(run_dir), cache_dir=str(cache),
        method="lora", head=method.head, lora_rank=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, learning_rate=args.lr,
        warmup_ratio=args.warmup_ratio, weight_decay=0.0, seed=seed, max_steps=args.steps,
        eval_steps=args.steps,  # one evaluation, at the end (as the Trainer side does)
        max_length=args.max_length, max_eval_samples=args.eval_samples,
        use_rslora=method.use_rslora, use_dora=method.use_dora, init_lora_weights=method.init,
        loraplus_lr_ratio=args.loraplus_ratio if method.loraplus else None,
        # the toolkit's defaults, written out: every Linear bias and LayerNorm trains with the head
        train_biases=True, train_layer_norms=True,
    )
    with StepClock() as clock:
        result = train(config, progress=False)
    return {"metrics": result.metrics, "trainable": result.trainable_parameters,
            "adapter_bytes": (run_dir / "adapter" / "adapter.safetensors").stat().st_size, **clock.summary()}


def peft_datasets(spec: Any, tokenizer: Any, data_dir: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    """The same rows roberta-lora reads (its own reader), tokenized the way it tokenizes them."""
    from roberta_lora.data.readers import load_split

    train = load_split(spec, "train", data_dir)
    validation = load_split(spec, spec.validation_splits[0], data_dir)
    if args.eval_samples is not None:
        validation = validation.select(range(min(args.eval_samples, len(validation))))

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(*[batch[c] for c in spec.text_columns], truncation=True, max_length=args.max_length)
        labels = batch[spec.label_column]
        return {**encoded, "labels": [float(v) for v in labels] if spec.kind == "regression" else labels}

    return tuple(ds.map(encode, batched=True, remove_columns=ds.column_names) for ds in (train, validation))


def peft_model(method: Method, model_dir: str, num_labels: int, args: argparse.Namespace) -> Any:
    """The Hugging Face classifier with PEFT LoRA on query,value, training what roberta-lora trains: every bias
    (bias="all"), every LayerNorm and the classifier (+ BERT's pooler, which roberta-lora's "roberta" head
    starts from) as modules_to_save."""
    import peft
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
    saved = ["classifier", "LayerNorm"]
    if getattr(model.base_model, "pooler", None) is not None:
        saved.append("pooler")
    config = peft.LoraConfig(
        task_type="SEQ_CLS", r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
        target_modules=["query", "value"], bias="all", modules_to_save=saved, use_rslora=method.use_rslora,
        use_dora=method.use_dora, init_lora_weights=True if method.init == "kaiming" else method.init,
    )
    return peft.get_peft_model(model, config)


def peft_trainable(model: torch.nn.Module) -> int:
    """Parameters that train: bias="all" also flags the biases of the frozen originals kept next to each
    modules_to_save copy, which never see a gradient; they are left out."""
    return sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and "original_module" not in name)


def run_peft(method: Method, task: str, seed: int, data_dir: Path, run_dir: Path, model_dir: str,
             args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from roberta_lora.data.tasks import load_task
    from roberta_lora.evaluation.metrics import compute_metrics

    spec = load_task(task)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_set, eval_set = peft_datasets(spec, tokenizer, data_dir, args)
    set_seed(seed)  # before the model: the classifier and LoRA A are drawn here
    model = peft_model(method, model_dir, spec.num_labels, args)
    optimizers: tuple[Any, Any] = (None, None)
    if method.loraplus:
        from peft.optimizers import create_loraplus_optimizer

        optimizers = (create_loraplus_optimizer(model, torch.optim.AdamW, lr=args.lr,
                                                loraplus_lr_ratio=args.loraplus_ratio, weight_decay=0.0), None)
    training_args = TrainingArguments(
        output_dir=str(run_dir), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=round(args.warmup_ratio * args.steps),  # roberta-lora's rounding
        max_grad_norm=1.0, seed=seed, data_seed=seed, train_sampling_strategy="group_by_length", report_to="none",
        save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set,
                      data_collator=DataCollatorWithPadding(tokenizer), optimizers=optimizers)
    with StepClock() as clock:
        trainer.train()
    # With train_sampling_strategy="group_by_length" the Trainer also feeds predict() in a shuffled
    # length-grouped order, so the references are the label_ids it returns alongside, never the dataset's order.
    output = trainer.predict(eval_set)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions  # (N, C)
    references = np.asarray(output.label_ids)
    if len(references) != len(eval_set) or not np.allclose(np.sort(references), np.sort(np.asarray(eval_set["labels"]))):
        raise RuntimeError(f"predict() returned {len(references)} labels for {len(eval_set)} validation rows")
    predictions = logits[:, 0] if spec.kind == "regression" else logits.argmax(axis=-1)
    metrics = compute_metrics(spec.metrics, predictions, references)
    model.save_pretrained(run_dir / "adapter")
    return {"metrics": metrics, "trainable": peft_trainable(model),
            "adapter_bytes": (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size, **clock.summary()}


# ----------------------------------------------------------------------------- records
def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One line, one write, appended: parts running side by side never interleave within a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def matching(records: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    wanted = settings(args)
    return [r for r in records if all(r["settings"].get(k) == wanted[k] for k in SETTING_KEYS)]


def claim(folder: Path, name: str, task: str, seed: int, args: argparse.Namespace) -> bool:
    """Take (method, task, seed) for this process, so processes side by side (the same --claims folder) share
    one queue: False when a live process holds it or its record is already written. A claim left by a process
    that died is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{task}-{seed}"
    recorded = any((r["method"], r["task"], r["seed"]) == (name, task, seed)
                   for r in matching(read_records(args.records), args))
    if recorded:
        return False
    try:
        holder = int(path.read_text() or "0")
    except (FileNotFoundError, ValueError):
        holder = None
    if holder is not None:
        try:
            os.kill(holder, 0)
            return False  # alive: it is running this one
        except ProcessLookupError:
            path.unlink(missing_ok=True)  # it died before writing the record
        except PermissionError:
            return False
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def run_all(args: argparse.Namespace, workdir: Path) -> None:
    from roberta_lora.data.tasks import load_task
    from roberta_lora.sources import resolve_model

    model_dir = resolve_model(args.model)  # the packaged folder: what the Trainer side loads
    done = {(r["method"], r["task"], r["seed"]) for r in matching(read_records(args.records), args)}
    plan = [(m, t, s) for m in args.methods for t in args.tasks for s in args.seeds if (m, t, s) not in done]
    print(f"{len(plan)} run(s) to do, {len(done)} already in {args.records}")
    subsets: dict[str, dict[str, Any]] = {}
    for name, task, seed in tqdm(plan, desc="runs", unit="run"):
        if args.claims is not None and not claim(args.claims, name, task, seed, args):
            continue  # another process side by side has it (or has done it)
        method = METHODS[name]
        data_dir = workdir / "glue"
        if task not in subsets:
            subsets[task] = write_subset(task, args.data_dir, data_dir, args.train_samples, args.subset_seed)
        run_dir = workdir / "runs" / f"{name}-{task}-{seed}"
        started = time.perf_counter()
        if method.side == "ours":
            found = run_ours(method, task, seed, data_dir, run_dir, workdir / "cache", args)
        else:
            found = run_peft(method, task, seed, data_dir, run_dir, model_dir, args)
        main_metric = load_task(task).main_metric
        record = {"method": name, "side": method.side, "task": task, "seed": seed, "main_metric": main_metric,
                  "score": found["metrics"][main_metric], "run_seconds": time.perf_counter() - started,
                  "threads": torch.get_num_threads(), "load_average": load_average(),
                  "written": time.strftime("%Y-%m-%d %H:%M:%S"), "command": args.command, "settings": settings(args),
                  **subsets[task], **found}
        append_record(args.records, record)
        tqdm.write(f"{name} {task} seed {seed}: {main_metric} {record['score']:.4f}, "
                   f"{record['step_cpu_median']:.3f} CPU s/step, {record['run_seconds']:.0f} s")
        shutil.rmtree(run_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- report
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict[str, Any]], tasks: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: per task (mean, std, n) of the score x100; the 5-task mean computed per seed, then its
    mean and std over the seeds that have every task; the median step time; parameters and adapter size."""
    table: dict[str, dict[str, Any]] = {}
    for name in methods:
        runs = [r for r in records if r["method"] == name]
        if not runs:
            continue
        per_task = {}
        for task in tasks:
            scores = [100 * r["score"] for r in runs if r["task"] == task]
            if scores:
                per_task[task] = (*mean_std(scores), len(scores))
        complete = [seed for seed in sorted({r["seed"] for r in runs})
                    if all(any(r["seed"] == seed and r["task"] == t for r in runs) for t in tasks)]
        seed_means = [statistics.fmean(100 * next(r["score"] for r in runs if r["seed"] == seed and r["task"] == t)
                                       for t in tasks) for seed in complete]
        table[name] = {
            "per_task": per_task,
            "mean": (*mean_std(seed_means), len(seed_means)) if seed_means else None,
            # every task weighs the same: the mean over tasks of each task's median (tasks differ 5x in length)
            "step_cpu": statistics.fmean(statistics.median(r["step_cpu_median"] for r in runs if r["task"] == t)
                                         for t in tasks if t in per_task),
            "step_wall": statistics.fmean(statistics.median(r["step_wall_median"] for r in runs if r["task"] == t)
                                          for t in tasks if t in per_task),
            "trainable": sorted({r["trainable"] for r in runs}),
            "adapter_bytes": sorted({r["adapter_bytes"] for r in runs}),
            "runs": len(runs),
        }
    return table


def within_noise(a: tuple[float, float, int], b: tuple[float, float, int]) -> tuple[float, float | None, bool]:
    """(difference, 2 x its standard error, |difference| <= that) for two (mean, std, n); the bound is None
    (and the answer False) when either side has a single seed, which gives no noise estimate."""
    difference = a[0] - b[0]
    if a[2] < 2 or b[2] < 2:
        return difference, None, False
    bound = 2 * math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])
    return difference, bound, abs(difference) <= bound


def findings(table: dict[str, dict[str, Any]], tasks: Sequence[str]) -> list[str]:
    lines = []
    mean_name = f"{len(tasks)}-task mean"
    base = table.get("lora", {}).get("mean")
    if base:
        compared = {name: within_noise(row["mean"], base) for name, row in table.items()
                    if name != "lora" and row["mean"]}

        def noted(name: str) -> str:
            gain, bound, same = compared[name]
            noise = "no noise estimate" if bound is None else (
                f"within seed noise, 2 standard errors {bound:.2f}" if same else f"beyond seed noise of {bound:.2f}")
            return f"`{name}` ({gain:+.2f}, {noise})"

        better = [noted(name) for name, (gain, _, _) in compared.items() if gain >= 1.0]
        verdict = (f"{', '.join(better)} beat it by >= 1 point on the {mean_name}." if better
                   else f"no method beats it by >= 1 point on the {mean_name}.")
        every = ", ".join(f"`{name}` {gain:+.2f}" for name, (gain, _, _) in compared.items())
        lines.append(f"- Against plain LoRA with the roberta head (`lora`, {base[0]:.2f}): {verdict} "
                     f"Every difference: {every}.")
    for ours, anchor in ANCHORS.items():
        if ours not in table or anchor not in table or not table[ours]["mean"] or not table[anchor]["mean"]:
            continue
        difference, bound, same = within_noise(table[ours]["mean"], table[anchor]["mean"])
        if bound is None:
            lines.append(f"- `{ours}` vs `{anchor}`: {mean_name} {difference:+.2f} points (one seed: no noise "
                         "estimate).")
            continue
        off = []
        for task in tasks:
            if task in table[ours]["per_task"] and task in table[anchor]["per_task"]:
                d, b, ok = within_noise(table[ours]["per_task"][task], table[anchor]["per_task"][task])
                if b is not None and not ok:
                    off.append(f"{TASK_TITLES[task]} {d:+.2f} (noise {b:.2f})")
        same_params = table[ours]["trainable"] == table[anchor]["trainable"]
        lines.append(f"- `{ours}` vs `{anchor}`: {mean_name} {difference:+.2f} points, "
                     f"{'within' if same else 'BEYOND'} seed noise (2 standard errors: {bound:.2f})"
                     + (f"; single tasks beyond noise: {', '.join(off)}" if off else "; every task within noise")
                     + ("; the same trainable parameter count." if same_params else
                        f"; trainable parameters DIFFER ({table[ours]['trainable']} vs {table[anchor]['trainable']})."))
    return lines


def cell(stats: tuple[float, float, int] | None) -> str:
    if stats is None:
        return "-"
    mean, std, n = stats
    return f"{mean:.2f} ± {std:.2f}" + ("" if n == 3 else f" (n={n})")


def majority_scores(tasks: Sequence[str], args: argparse.Namespace) -> dict[str, float]:
    """Each task's main metric (x100) for always predicting the most frequent validation class: the floor a
    run that learned nothing reaches (Matthews 0 for CoLA; Pearson is undefined for a constant, shown as 0)."""
    from roberta_lora.data.readers import load_split
    from roberta_lora.data.tasks import load_task
    from roberta_lora.evaluation.metrics import compute_metrics

    scores = {}
    for task in tasks:
        spec = load_task(task)
        try:
            validation = load_split(spec, spec.validation_splits[0], args.data_dir)
        except Exception:  # noqa: BLE001 - the reference row is optional; a report without data still works
            continue
        labels = np.asarray(validation[spec.label_column])[: args.eval_samples]
        if spec.kind == "regression":
            scores[task] = 0.0
            continue
        values, counts = np.unique(labels, return_counts=True)
        constant = np.full_like(labels, values[counts.argmax()])
        scores[task] = 100 * compute_metrics([spec.main_metric], constant, labels)[spec.main_metric]
    return scores


def report_body(records: list[dict[str, Any]], args: argparse.Namespace, table: dict[str, dict[str, Any]]) -> str:
    tasks = args.tasks
    clock = "step_cpu" if args.threads == 1 else "step_wall"
    headers = ([TASK_TITLES[t] for t in tasks] + [f"{len(tasks)}-task mean", f"s/step ({'CPU' if args.threads == 1 else 'wall'})",
               "trainable params", "adapter file"])
    rows = []
    for name, row in table.items():
        # STS-B's head has one output, the others two: the lowest and highest count / size over the tasks
        params = "–".join(dict.fromkeys(f"{p:,}" for p in (min(row["trainable"]), max(row["trainable"]))))
        size = "–".join(dict.fromkeys(f"{b / 1e6:.2f}" for b in (min(row["adapter_bytes"]), max(row["adapter_bytes"]))))
        size += " MB"
        rows.append([f"`{name}`"] + [cell(row["per_task"].get(t)) for t in tasks]
                    + [f"**{cell(row['mean'])}**", f"{row[clock]:.3f}", params, size])
    floor = majority_scores(tasks, args)
    if floor:
        rows.append(["majority class (reference)"] + [f"{floor[t]:.2f}" if t in floor else "-" for t in tasks]
                    + [f"{statistics.fmean(floor.values()):.2f}" if len(floor) == len(tasks) else "-", "-", "0", "-"])
    metric_names = {t: next((r["main_metric"] for r in records if r["task"] == t), "?") for t in tasks}
    subsets = {t: next((r for r in records if r["task"] == t), None) for t in tasks}
    data = "; ".join(f"{TASK_TITLES[t]} {s['train_rows']} of {s['train_rows_available']} rows (sha256 "
                     f"{s['train_sha256']}), {metric_names[t]}" for t, s in subsets.items() if s)
    s = settings(args)
    threads_note = (f"{args.threads} torch thread(s) per run; s/step: each run's median time between consecutive "
                    "optimizer steps (torch's global post-step hook, the same clock on both sides: forward, backward, "
                    "clipping, the step and fetching the next batch), the median over a task's seeds, then the mean "
                    "over the tasks, on the "
                    + ("process CPU clock (with one thread it is the work done; it moves less than the wall clock "
                       "when other processes share the cores, but not nothing: caches are shared too)."
                       if args.threads == 1 else "wall clock.")
                    + " The methods ran one after another (two processes side by side), not interleaved, so the "
                    "load differed between them: read step-time differences under ~20 % as noise; "
                    "`benchmarks/step_time.py` is the interleaved speed comparison.")
    settings_text = (
        f"Model: `{s['model']}` (the packaged pretrained checkpoint, BERT family: 6 layers, hidden 384). "
        f"Every run: LoRA r={s['rank']}, alpha={s['alpha']:g}, dropout {s['dropout']:g} on query,value; "
        f"{s['steps']} optimizer steps at batch {s['batch_size']}, max length {s['max_length']}, AdamW at peak lr "
        f"{s['lr']:g}, no weight decay, gradient clipping at 1.0, linear warm-up over {s['warmup_ratio']:.0%} of the "
        f"steps then linear decay to 0, length-grouped batches on both sides; seeds {args.seeds}. "
        f"LoRA+ (`loraplus`, `peft-loraplus`): ratio {s['loraplus_ratio']:g}. "
        f"Training data: a fixed random subset of each task's training split, drawn once with seed {s['subset_seed']} "
        f"(independent of the run seed), the same rows for every method and seed: {data}. Evaluation: "
        + ("the full validation split" if s["eval_samples"] is None else f"the first {s['eval_samples']} validation rows")
        + ", once, after the last step, scored with `roberta_lora.evaluation.metrics` on both sides (the task's main "
        "metric as its task file names it; MRPC's is accuracy), x100.\n\n"
        "What trains is the same on both sides: the LoRA factors, every bias (PEFT `bias=\"all\"`), every "
        "LayerNorm (PEFT `modules_to_save` \"LayerNorm\") and the classifier. Ours keeps the toolkit defaults "
        "(`train_biases=True`, `train_layer_norms=True`); `head=\"roberta\"` on BERT is the pretrained pooler "
        "(dense + tanh, trained) and a new output layer, as `BertForSequenceClassification` (PEFT "
        "`modules_to_save` \"classifier\", \"pooler\"); `lora-light` is the tutorial's light head (LayerNorm + "
        "Linear on [CLS], no pooler). Trainable parameters leave out the frozen originals PEFT keeps next to "
        "each modules_to_save copy. Adapter file: ours `adapter.safetensors`, PEFT `adapter_model.safetensors` "
        "(both hold every trained tensor).\n\n"
        "Known differences between the sides (by design, not bugs): the roberta head puts a dropout before the "
        "pooler's dense layer as well as after it (BERT's classifier only after); ours draws one LoRA dropout mask "
        "shared by query and value, PEFT one per module; PEFT's `create_loraplus_optimizer` gives every 1-D "
        "parameter (all the biases and LayerNorms here) B's raised learning rate, ours raises only B, as the "
        "LoRA+ paper does; batch order and the length grouping follow each side's own sampler.\n\n"
        + threads_note + "\n\n"
        "Mean ± sample standard deviation over the seeds; the 5-task mean is computed per seed, then averaged. "
        "\"Within seed noise\" means the difference of two means is at most two standard errors "
        "(2 sqrt(s1²/n1 + s2²/n2)). This table is the model selection: nothing was tuned on the validation sets "
        "beyond it (one setting per method, chosen before the run)."
    )
    lines = findings(table, tasks)
    flat = [t for t in tasks if t in floor and all(row["per_task"].get(t, (math.inf,))[0] < floor[t] + 1
                                                   for row in table.values() if t in row["per_task"])]
    if flat and table:
        lines.append(f"- At this budget no method gets more than 1 point above the majority class on "
                     f"{', '.join(TASK_TITLES[t] for t in flat)}: those tasks are at the floor for every method and "
                     f"say nothing about the variants; the differences come from the other tasks.")
    return "\n\n".join([settings_text, markdown_table(["method", *headers], rows),
                        "## Findings\n\n" + ("\n".join(lines) if lines else "- (not enough runs yet)"),
                        run_time_text(records) + f" Plot: `{args.plot.name}` ({len(tasks)}-task mean ± std per method)."
                        ]) + "\n"


def run_time_text(records: list[dict[str, Any]]) -> str:
    """How long the runs took: summed, and on the clock from the first start to the last end."""
    if not records:
        return "No runs yet."
    total = sum(r["run_seconds"] for r in records)
    ends = [time.mktime(time.strptime(r["written"], "%Y-%m-%d %H:%M:%S")) for r in records]
    span = max(ends) - min(end - r["run_seconds"] for end, r in zip(ends, records, strict=True))
    loads = [float(r["load_average"].split(" / ")[0]) for r in records if r["load_average"] != "n/a"]
    load = f", median 1-minute load average at the end of a run {statistics.median(loads):.1f}" if loads else ""
    intervals = [(end - r["run_seconds"], end) for end, r in zip(ends, records, strict=True)]
    # "written" has whole seconds: look 2 s after each start, so a run never overlaps the one before it by rounding
    side_by_side = max(sum(start <= moment + 2 < stop for start, stop in intervals) for moment, _ in intervals)
    return (f"{len(records)} runs, {total / 60:.0f} minutes of run time in all, {span / 60:.0f} minutes from the "
            f"first start to the last end, at most {side_by_side} runs at a time{load}.")


def plot(table: dict[str, dict[str, Any]], path: Path, title: str, floor: float | None = None) -> Path:
    """The 5-task mean ± std per method as points with error bars (the axis does not start at 0, so no bars),
    with plain LoRA (ours) and, when known, the majority-class floor as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, row in table.items() if row["mean"]]
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for x, name in enumerate(names):
        mean, std, _ = table[name]["mean"]
        axis.errorbar(x, mean, yerr=std, fmt="o", markersize=7, capsize=5,
                      color="tab:orange" if METHODS[name].side == "peft" else "tab:blue")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color="tab:blue", label="roberta-lora"),
               plt.Line2D([], [], marker="o", linestyle="", color="tab:orange", label="PEFT + Trainer")]
    if "lora" in table and table["lora"]["mean"]:
        handles.append(axis.axhline(table["lora"]["mean"][0], color="gray", linestyle="--", linewidth=1,
                                    label="lora (ours, roberta head)"))
    if floor is not None:
        handles.append(axis.axhline(floor, color="black", linestyle=":", linewidth=1, label="majority class"))
    axis.legend(handles=handles, loc="best", fontsize=8)
    axis.set_ylabel("mean of the task main metrics (x100)")
    axis.set_title(title, fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(args: argparse.Namespace, argv: Sequence[str] | None) -> Path:
    records = matching(read_records(args.records), args)
    records = [r for r in records if r["task"] in args.tasks and r["seed"] in args.seeds and r["method"] in args.methods]
    table = summarize(records, args.tasks, args.methods)
    body = report_body(records, args, table)
    floor = majority_scores(args.tasks, args)
    plot(table, args.plot, f"LoRA variants on GLUE ({', '.join(TASK_TITLES[t] for t in args.tasks)}), "
                           f"{args.model}, {args.steps} steps, mean ± std over seeds {args.seeds}",
         statistics.fmean(floor.values()) if len(floor) == len(args.tasks) else None)
    header = (
        "# LoRA variants on GLUE: roberta-lora against plain LoRA and against PEFT\n\n"
        f"Command: `{command_line('variants.py', argv)}` (the runs were appended to `{args.records.name}` by the "
        "commands listed under it; this table reads them)\n\n"
        f"Machine: {machine_description('cpu')}\n\n"
        f"Load average (1/5/15 min) when written: {load_average()}. Step times on a shared machine are noisy.\n\n"
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.\n\n"
    )
    commands = sorted({r.get("command", "") for r in records} - {""})
    listed = ("Run commands:\n\n" + "\n".join(f"- `{c}`" for c in commands) + "\n\n") if commands else ""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(header + listed + body, encoding="utf-8")
    print(body)
    return args.output


def main(argv: Sequence[str] | None = None) -> Path:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = parse_args(argv)
    set_threads(args.threads)
    if not args.report:
        args.command = command_line("variants.py", argv)
        with tempfile.TemporaryDirectory(prefix="variants-") as scratch:
            workdir = args.workdir or Path(scratch)
            run_all(args, workdir)
    if args.no_report:
        return args.records
    return write_report(args, argv)


if __name__ == "__main__":
    main()

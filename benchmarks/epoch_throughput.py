"""Examples per second for one epoch of training plus a full validation pass, on real GLUE data.

Pipelines, each on the same model, the same examples and the same batch sizes:

- roberta-lora:     `roberta_lora.train.train()` as the CLI runs it (length-grouped batches, evaluation
                    sorted by length, tokenized-data cache warm). The whole call is timed: tokenizer
                    and model loading, one epoch, the validation pass after the epoch *and* the final
                    one that writes prediction files, adapters, checkpoint and curves.
- trainer-padded:   transformers' `Trainer` + PEFT LoRA, inputs padded to 128 (the example scripts'
                    default, `pad_to_max_length=True`). `trainer.train()` + `trainer.evaluate()` timed.
- trainer-dynamic:  the same with `DataCollatorWithPadding` (each batch padded to its longest example).

Tokenization is not timed for any pipeline (roberta-lora reads its warm cache; the Trainer datasets
are tokenized before the clock starts). Examples/s = (training + validation examples) / seconds, the
validation examples counted once for every pipeline.

    python benchmarks/epoch_throughput.py                         # SST-2 and RTE from ../shared/data/glue
    python benchmarks/epoch_throughput.py --model /path/to/distilroberta-base --data-dir /path/to/glue
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    RESULTS_DIR,
    SHARED_GLUE,
    clock_note,
    command_line,
    markdown_table,
    set_threads,
    verdict,
    write_results,
)

PIPELINES = ("roberta-lora", "trainer-padded", "trainer-dynamic")
GOAL_VS_DYNAMIC = 1.2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_GLUE, help="a GLUE folder (SST-2/, RTE/, ...)")
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--train-samples", type=int, default=2000, help="the first N training examples")
    parser.add_argument("--eval-samples", type=int, default=None, help="the first N validation examples (default all)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a local RoBERTa checkpoint dir with its tokenizer (default: a random one built here)")
    parser.add_argument("--layers", type=int, default=6, help="layers of the random default model")
    parser.add_argument("--hidden", type=int, default=384, help="hidden size of the random default model")
    parser.add_argument("--vocab", type=int, default=30000, help="BPE vocabulary of the random default model")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help=f"comma list from {list(PIPELINES)}")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of every pipeline, interleaved")
    parser.add_argument("--warmup-samples", type=int, default=64,
                        help="examples for one untimed warm-up run of every pipeline (0: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: one per core)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "epoch_throughput.md")
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    unknown = [p for p in args.pipelines if p not in PIPELINES]
    if unknown:
        parser.error(f"unknown pipeline(s) {unknown}; expected names from {list(PIPELINES)}")
    return args


# ----------------------------------------------------------------------------- model and data
def build_default_model(directory: Path, args: argparse.Namespace) -> Path:
    """A random RoBERTa (`--layers`, `--hidden`, FFN 4x hidden, 64-dim heads) with a byte-level BPE
    tokenizer trained on the tasks' training text, so sentences split into word-sized tokens
    about as roberta-base's tokenizer splits them (the toy tokenizer's 400 tokens would not)."""
    from roberta_lora.data.readers import load_split
    from roberta_lora.data.tasks import load_task
    from roberta_lora.model.toy import make_toy_roberta

    corpus: list[str] = []
    for task in args.tasks:
        spec = load_task(task)
        raw = load_split(spec, "train", args.data_dir)
        for column in spec.text_columns:
            corpus.extend(raw[column])
    return make_toy_roberta(directory, corpus=corpus, vocab_size=args.vocab, hidden_size=args.hidden,
                            num_layers=args.layers, num_heads=max(1, args.hidden // 64),
                            intermediate_size=4 * args.hidden)


def raw_splits(task: str, data_dir: Path, train_samples: int, eval_samples: int | None) -> tuple[Any, Any, Any]:
    from roberta_lora.data.readers import load_split
    from roberta_lora.data.tasks import load_task

    spec = load_task(task)
    train = load_split(spec, "train", data_dir)
    train = train.select(range(min(train_samples, len(train))))
    validation = load_split(spec, spec.validation_splits[0], data_dir)
    if eval_samples is not None:
        validation = validation.select(range(min(eval_samples, len(validation))))
    return spec, train, validation


# ----------------------------------------------------------------------------- pipelines
def run_roberta_lora(task: str, model_dir: Path, args: argparse.Namespace, run_dir: Path, cache: Path,
                     train_samples: int, eval_samples: int | None) -> dict[str, Any]:
    from roberta_lora.data.tasks import load_task
    from roberta_lora.training.config import resolve_train_config
    from roberta_lora.training.loop import train

    config = resolve_train_config(load_task(task), {
        "model": str(model_dir), "data_dir": str(args.data_dir), "output_dir": str(run_dir), "epochs": 1,
        "max_train_samples": train_samples, "max_eval_samples": eval_samples, "max_length": args.max_length,
        "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size, "cache_dir": str(cache),
    })
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(config, progress=False)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "accuracy": result.metrics["accuracy"]}


def warm_cache(task: str, model_dir: Path, args: argparse.Namespace, cache: Path, train_samples: int,
               eval_samples: int | None) -> None:
    """Tokenize once into roberta-lora's cache, so the timed runs read it as a repeated run would."""
    from transformers import AutoTokenizer

    from roberta_lora.data.task_data import load_task_data
    from roberta_lora.data.tasks import load_task

    load_task_data(load_task(task), AutoTokenizer.from_pretrained(model_dir), args.data_dir,
                   max_length=args.max_length, max_train_samples=train_samples, max_eval_samples=eval_samples,
                   cache_dir=cache)


def trainer_datasets(task: str, tokenizer: Any, args: argparse.Namespace, padded: bool, train_samples: int,
                     eval_samples: int | None) -> tuple[Any, Any]:
    spec, train, validation = raw_splits(task, args.data_dir, train_samples, eval_samples)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(*[batch[c] for c in spec.text_columns], truncation=True, max_length=args.max_length,
                            padding="max_length" if padded else False)
        return {**encoded, "labels": batch[spec.label_column]}

    return tuple(ds.map(encode, batched=True, remove_columns=ds.column_names) for ds in (train, validation))


def run_trainer(task: str, model_dir: Path, args: argparse.Namespace, run_dir: Path, padded: bool,
                train_samples: int, eval_samples: int | None) -> dict[str, Any]:
    import peft
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_set, eval_set = trainer_datasets(task, tokenizer, args, padded, train_samples, eval_samples)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.1,
                                                       target_modules=["query", "value"]))
    # The same trainable set as roberta-lora: LoRA and the head (PEFT marks both), every Linear bias and
    # LayerNorm of the encoder (the head's frozen original, kept by PEFT's modules_to_save, stays frozen).
    for name, module in model.named_modules():
        if "original_module" in name:
            continue
        if isinstance(module, torch.nn.LayerNorm):
            module.requires_grad_(True)
        elif isinstance(module, torch.nn.Linear) and module.bias is not None:
            module.bias.requires_grad_(True)
    training_args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, num_train_epochs=1, learning_rate=5e-4,
        warmup_steps=1 / 3, seed=42, report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=default_data_collator if padded else DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
    )
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    metrics = trainer.evaluate()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "accuracy": metrics["eval_accuracy"]}


# ----------------------------------------------------------------------------- main
def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """One record per timed run: task, pipeline, example counts, wall and CPU seconds, accuracy."""
    model_dir = args.model or build_default_model(workdir / "model", args)
    cache = workdir / "cache"
    records: list[dict[str, Any]] = []
    counter = 0

    def run_one(task: str, pipeline: str, train_samples: int, eval_samples: int | None) -> dict[str, Any]:
        nonlocal counter
        counter += 1
        run_dir = workdir / "runs" / f"{counter:03d}-{task}-{pipeline}"
        if pipeline == "roberta-lora":
            return run_roberta_lora(task, model_dir, args, run_dir, cache, train_samples, eval_samples)
        return run_trainer(task, model_dir, args, run_dir, pipeline == "trainer-padded", train_samples, eval_samples)

    for task in args.tasks:
        spec, train, validation = raw_splits(task, args.data_dir, args.train_samples, args.eval_samples)
        warm_cache(task, model_dir, args, cache, args.train_samples, args.eval_samples)
        if args.warmup_samples:
            warm_cache(task, model_dir, args, cache, args.warmup_samples, args.warmup_samples)
            for pipeline in args.pipelines:
                run_one(task, pipeline, args.warmup_samples, args.warmup_samples)
        for repeat in range(args.repeats):
            shift = repeat % len(args.pipelines)
            for pipeline in args.pipelines[shift:] + args.pipelines[:shift]:
                timing = run_one(task, pipeline, args.train_samples, args.eval_samples)
                records.append({"task": task, "pipeline": pipeline, "train": len(train), "eval": len(validation),
                                **timing})
    return records


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    # With one torch thread CPU time is robust to other load (see clock_note); else the wall clock.
    clock = "cpu" if torch.get_num_threads() == 1 else "wall"
    headers = ["task", "pipeline", "train + eval examples", "median wall s", "median CPU s", "examples/s (wall)",
               "examples/s (CPU)", "vs trainer-padded", "vs trainer-dynamic", "accuracy"]
    rows, summary = [], []
    for task in args.tasks:
        group: dict[str, dict[str, Any]] = {}
        for pipeline in args.pipelines:
            runs = [r for r in records if r["task"] == task and r["pipeline"] == pipeline]
            if runs:
                group[pipeline] = {**runs[0], "wall": float(np.median([r["wall"] for r in runs])),
                                   "cpu": float(np.median([r["cpu"] for r in runs]))}
        for r in group.values():
            r["speed"] = {c: (r["train"] + r["eval"]) / r[c] for c in ("wall", "cpu")}
        for pipeline, r in group.items():
            ratio = {other: r["speed"][clock] / group[other]["speed"][clock] for other in ("trainer-padded", "trainer-dynamic")
                     if other in group}
            rows.append([task, pipeline, f"{r['train']} + {r['eval']}", f"{r['wall']:.1f}", f"{r['cpu']:.1f}",
                         f"{r['speed']['wall']:.1f}", f"{r['speed']['cpu']:.1f}",
                         f"{ratio['trainer-padded']:.2f}" if "trainer-padded" in ratio else "-",
                         f"{ratio['trainer-dynamic']:.2f}" if "trainer-dynamic" in ratio else "-",
                         f"{r['accuracy']:.3f}"])
        ours = group.get("roberta-lora")
        if ours and "trainer-dynamic" in group:
            value = ours["speed"][clock] / group["trainer-dynamic"]["speed"][clock]
            summary.append(f"- {task}: roberta-lora / Trainer+PEFT dynamic padding = **{value:.2f}**, "
                           f"{verdict(value, GOAL_VS_DYNAMIC, below=False)}")
        if ours and "trainer-padded" in group:
            value = ours["speed"][clock] / group["trainer-padded"]["speed"][clock]
            summary.append(f"- {task}: roberta-lora / Trainer+PEFT padded to {args.max_length} = **{value:.2f}**")
    model = str(args.model) if args.model else (
        f"random RoBERTa built here: {args.layers} layers, hidden {args.hidden}, FFN {4 * args.hidden}, "
        f"{max(1, args.hidden // 64)} heads, byte-level BPE ({args.vocab} tokens asked) trained on the tasks' training text")
    settings = (
        f"Model: {model}. Data: {args.data_dir}, the first {args.train_samples} training examples and "
        f"{'all' if args.eval_samples is None else f'the first {args.eval_samples}'} validation examples; max length "
        f"{args.max_length}; batch {args.batch_size} for training, {args.eval_batch_size} for evaluation in every "
        "pipeline; LoRA r=8, alpha=8, dropout 0.1 on query,value, with the same extras trained (biases, LayerNorms, "
        f"head); 1 epoch. {args.repeats} timed run(s) per pipeline, interleaved, after one untimed warm-up run on "
        f"{args.warmup_samples} examples. Ratios use the {clock} clock. {clock_note()} roberta-lora's time includes "
        "loading the tokenizer and model, a second validation pass (the final one that writes prediction files) and "
        "writing adapters, checkpoint and curves; the Trainer's time covers train() and evaluate() only. The Trainer "
        "keeps its other defaults (its AdamW, no length grouping, RobertaForSequenceClassification's head)."
    )
    return "\n\n".join([settings, markdown_table(headers, rows), "\n".join(summary)]) + "\n"


def main(argv: Sequence[str] | None = None) -> Path:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="epoch-throughput-") as scratch:
        workdir = args.workdir or Path(scratch)
        records = run(args, workdir)
    body = report(records, args)
    print(body)
    return write_results(args.output, "Epoch throughput on GLUE data", command_line("epoch_throughput.py", argv),
                         "cpu", body)


if __name__ == "__main__":
    main()

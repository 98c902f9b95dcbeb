"""CLI: `train`, `evaluate`, `predict` and `train-all`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from roberta_lora.choices import (
    COMPILE_BACKENDS,
    DTYPES,
    HEAD_KINDS,
    LORA_INITS,
    METHODS,
    MIXED_PRECISION,
    OPTIMIZERS,
    QUANTIZE,
    TRACKERS,
)
from roberta_lora.cli.output import print_json, print_text
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError
from roberta_lora.sources import resolve_adapter
from roberta_lora.training.config import FIELD_FLAGS, resolve_train_config, resume_train_config

# CLI flag (argparse dest) -> TrainConfig field, for flags whose names differ from the field.
FLAG_FIELDS = {flag.removeprefix("--"): field for field, flag in FIELD_FLAGS.items()}


def _whole_number(text: str) -> int:
    """argparse type of --num_train_epochs: run_glue passes floats ("3.0"); whole numbers only here."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of epochs such as 3, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number of epochs (fractions are not supported; use "
                                         f"--max-steps), got {text!r}")
    return int(value)


# transformers' run_glue.py / TrainingArguments (and microsoft/LoRA's --lora_r) spelling -> (our flag, type or
# the constant it stores). Accepted, hidden from --help's main list; docs/guide/training.md has the table.
RUN_GLUE_ALIASES: dict[str, tuple[str, object]] = {
    "--model_name_or_path": ("--model", str), "--task_name": ("--task", str), "--output_dir": ("--output-dir", str),
    "--overwrite_output_dir": ("--overwrite", True), "--learning_rate": ("--lr", float),
    "--num_train_epochs": ("--epochs", _whole_number), "--per_device_train_batch_size": ("--batch-size", int),
    "--per_device_eval_batch_size": ("--eval-batch-size", int), "--gradient_accumulation_steps": ("--grad-accum", int),
    "--max_seq_length": ("--max-length", int), "--warmup_ratio": ("--warmup-ratio", float),
    "--weight_decay": ("--weight-decay", float), "--max_steps": ("--max-steps", int),
    "--max_train_samples": ("--max-train-samples", int), "--max_eval_samples": ("--max-eval-samples", int),
    "--eval_steps": ("--eval-steps", int), "--save_steps": ("--save-steps", int),
    "--logging_steps": ("--logging-steps", int), "--save_total_limit": ("--save-total-limit", int),
    "--metric_for_best_model": ("--metric-for-best", str), "--early_stopping_patience": ("--early-stopping-patience", int),
    "--gradient_checkpointing": ("--gradient-checkpointing", True), "--fp16": ("--mixed-precision", "fp16"),
    "--bf16": ("--mixed-precision", "bf16"), "--lora_r": ("--rank", int), "--lora_alpha": ("--alpha", float),
    "--lora_dropout": ("--dropout", float),
}
ALIAS_PREFIX = "run_glue_alias__"


def add_run_glue_aliases(parser: argparse.ArgumentParser) -> None:
    """The RUN_GLUE_ALIASES whose flag this parser has, hidden (help=SUPPRESS), each into its own dest, so
    that `resolve_run_glue_aliases` can refuse an alias and its flag given with different values."""
    for alias, (flag, kind) in RUN_GLUE_ALIASES.items():
        target = parser._option_string_actions.get(flag)
        if target is None or alias in parser._option_string_actions:
            continue
        dest = f"{ALIAS_PREFIX}{target.dest}__{alias.lstrip('-')}"
        if callable(kind):
            parser.add_argument(alias, dest=dest, type=kind, help=argparse.SUPPRESS)
        else:
            parser.add_argument(alias, dest=dest, action="store_const", const=kind, help=argparse.SUPPRESS)


def resolve_run_glue_aliases(args: argparse.Namespace) -> None:
    """Move each given run_glue spelling onto our flag's dest; ConfigError when both are given and differ."""
    for key in [k for k in vars(args) if k.startswith(ALIAS_PREFIX)]:
        value = getattr(args, key)
        dest, alias = key.removeprefix(ALIAS_PREFIX).split("__")
        delattr(args, key)
        if value is None:
            continue
        ours = getattr(args, dest, None)
        if ours is not None and ours != value:
            flag = RUN_GLUE_ALIASES["--" + alias][0]
            raise ConfigError(f"--{alias} ({value!r}) and {flag} ({ours!r}) say different things; pass one of them")
        setattr(args, dest, value)


def add_training_flags(parser: argparse.ArgumentParser, with_method: bool = True) -> None:
    """Every setting a user tunes; unset flags fall back to --config, then the task's recipe."""
    parser.add_argument("--model", help="hub id, local checkpoint dir or all-MiniLM-L6-v2 (packaged by the minilm "
                        "extra: works offline); default roberta-base")
    parser.add_argument("--data-dir", help="local data root: GLUE layout (<dir>/SST-2/train.tsv ...) or squad/ JSON")
    if with_method:
        parser.add_argument("--method", choices=METHODS, help="what trains (default lora)")
    parser.add_argument("--rank", type=int, help="LoRA rank r (recipe: 8)")
    parser.add_argument("--alpha", type=float, help="LoRA alpha; the update is scaled by alpha/r (recipe: 8)")
    parser.add_argument("--dropout", type=float, help="dropout on the LoRA branch (recipe: 0.1)")
    parser.add_argument("--targets", help="query,value (default) | all-linear | comma list of "
                        "query,key,value,attention_output,intermediate,output")
    parser.add_argument("--head", choices=HEAD_KINDS, help="GLUE head (default recipe: roberta; --recipe tutorial: light)")
    parser.add_argument("--head-dropout", type=float, help="dropout inside the head (default 0.1)")
    parser.add_argument("--lr", type=float, help="peak learning rate (recipe: 5e-4)")
    parser.add_argument("--epochs", type=int, help="epochs (recipe: 6)")
    parser.add_argument("--warmup-ratio", type=float, help="share of steps with linear warm-up (recipe: 1/3)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay on weight matrices (recipe: 0)")
    parser.add_argument("--batch-size", type=int, help="examples per step per process (recipe: 16)")
    parser.add_argument("--eval-batch-size", type=int, help="examples per evaluation batch (default 64)")
    parser.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    parser.add_argument("--max-length", type=int, help="tokens per example (task default: 128, SQuAD 384)")
    parser.add_argument("--doc-stride", type=int, help="SQuAD window overlap (default 128)")
    parser.add_argument("--seed", type=int, help="seed for LoRA init, head, dropout and data order (recipe: 42)")
    parser.add_argument("--mixed-precision", choices=MIXED_PRECISION, help="bf16 (CPU or GPU) or fp16 (CUDA); default no")
    parser.add_argument("--max-train-samples", type=int, help="use the first N training examples")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on the first N examples of each split")
    parser.add_argument("--max-steps", type=int, help="train for exactly N optimizer steps; overrides --epochs (the "
                        "schedule spans them)")
    steps = parser.add_argument_group("steps, checkpoints and the best adapter (default: once per epoch)")
    steps.add_argument("--eval-steps", type=int, help="evaluate every N optimizer steps (and at the end)")
    steps.add_argument("--save-steps", type=int, help="checkpoint every N steps (default: after each evaluation); "
                       "--resume continues exactly from the last one, mid-epoch included")
    steps.add_argument("--logging-steps", type=int, help="log the mean loss of every N steps to train.log and the "
                       "tracker (default: the tracker gets every step)")
    steps.add_argument("--save-total-limit", type=int, help="checkpoints kept: the latest in checkpoint/, the K-1 "
                       "before it as checkpoint-<step>/ (default 1)")
    steps.add_argument("--metric-for-best", help="the validation metric that picks best/ (default: the task's main "
                       "metric); higher is better, a NaN ranks worst")
    steps.add_argument("--early-stopping-patience", type=int, help="stop after N evaluations without a better "
                       "--metric-for-best")
    steps.add_argument("--gradient-checkpointing", action="store_const", const=True,
                       help="recompute activations in the backward pass: much less memory, slower steps")
    variants = parser.add_argument_group("LoRA variants (PEFT's names; see docs/guide/model.md, LoRA variants)")
    variants.add_argument("--use-rslora", action=argparse.BooleanOptionalAction, default=None,
                          help="rsLoRA: scale the update by alpha/sqrt(r) instead of alpha/r")
    variants.add_argument("--use-dora", action=argparse.BooleanOptionalAction, default=None,
                          help="DoRA: a trained magnitude per output feature (not with --quantize)")
    variants.add_argument("--init-lora-weights", choices=LORA_INITS, help="how the factors start (PEFT's names; default "
                          "recipe: pissa, else kaiming): pissa / olora start from the base weight and save a rank-2r "
                          "adapter")
    variants.add_argument("--layers-to-transform", help="LoRA only in these layers, e.g. 8,9,10,11 (default: all)")
    variants.add_argument("--loraplus-lr-ratio", type=float, help="LoRA+: B's learning rate = R x --lr (paper: 16)")
    trains = parser.add_argument_group("what trains besides LoRA (PEFT's bias=\"none\": --no-train-biases)")
    trains.add_argument("--train-biases", action=argparse.BooleanOptionalAction, default=None,
                        help="train every bias of the base (default: yes; PEFT bias=\"all\")")
    trains.add_argument("--train-layer-norms", action=argparse.BooleanOptionalAction, default=None,
                        help="train the LayerNorm weights and biases (default: yes)")
    trains.add_argument("--train-embeddings", action=argparse.BooleanOptionalAction, default=None,
                        help="train the embedding tables (default: no)")
    trains.add_argument("--max-grad-norm", type=float, help="clip the gradient norm (default 1.0; 0 turns it off)")
    parser.add_argument("--no-group-by-length", dest="group_by_length", action="store_const", const=False,
                        help="plain shuffled batches instead of length-grouped ones")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--init-from", help="warm-start from another adapter: a folder or a Hub repo id (e.g. the MNLI adapter)")
    parser.add_argument("--allow-base-mismatch", action="store_const", const=True,
                        help="accept an --init-from adapter trained on another base (warns)")
    parser.add_argument("--null-score-diff-threshold", type=float, help="SQuAD v2 no-answer threshold (0.0)")
    parser.add_argument("--quantize", choices=QUANTIZE, help="load the frozen base in 4/8 bit (CUDA + bitsandbytes)")
    parser.add_argument("--optim", choices=OPTIMIZERS, help="optimizer (8-bit ones need CUDA + bitsandbytes)")
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager"], help="attention kernel (default: the checkpoint's)")
    parser.add_argument("--torch-compile", action="store_const", const=True,
                        help="torch.compile the model (worth it on a GPU; the first steps are slow while it compiles)")
    parser.add_argument("--torch-compile-backend", choices=COMPILE_BACKENDS, help="compile backend (default inductor)")
    parser.add_argument("--cache-dir", help="tokenized-data cache (default ~/.cache/roberta_lora)")
    parser.add_argument("--config", help="TOML file overriding the task's recipe and any setting above")
    parser.add_argument("--recipe", help="named recipe: pissa (default: the tutorial's settings, a PiSSA start, the "
                        "roberta head), tutorial (the task file's), lora-paper-base, lora-paper-large, or a recipe "
                        "TOML path (see recipes/README.md)")
    parser.add_argument("--seeds", type=seed_list, help="comma list of seeds (e.g. 0,1,2,3,4): one run per seed in "
                        "<output-dir>/seed-<n>/ (in a sweep: <output-dir>/trial-<k>/seed-<n>/) and a summary (median, mean, std, "
                        "min, max at each best epoch)")
    parser.add_argument("--report-to", choices=TRACKERS, help="log loss, learning rate and validation metrics to "
                        "an experiment tracker (tensorboard: files in the run folder; default none)")
    parser.epilog = ("transformers' run_glue.py spellings are accepted too (--learning_rate, --num_train_epochs, "
                     "--per_device_train_batch_size, --max_seq_length, --fp16, --bf16, ...): see docs/guide/training.md (run_glue spellings).")
    add_run_glue_aliases(parser)


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype of `evaluate` and `predict` (checked by `check_device_flags` before any model loads)."""
    parser.add_argument("--device", default="auto", help="where the model runs: auto (a CUDA GPU when there is "
                        "one, else the CPU), cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="the model's weights: float32, bfloat16 "
                        "(CPU or GPU; about half the memory, answers close to float32) or float16 (CUDA only); "
                        "default float32")


def check_device_flags(args: argparse.Namespace) -> None:
    """Refuse an unknown or absent --device, or a --dtype it cannot run, before the slow model loading starts."""
    if str(args.device).strip().lower() in ("auto", "cpu") and args.dtype != "float16":
        return  # nothing to ask torch about (and importing it takes seconds): answer other mistakes first
    from roberta_lora.runtime import resolve_device, resolve_dtype  # torch, but not yet the model code

    resolve_dtype(args.dtype, resolve_device(args.device))


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train one adapter for one task",
                                  usage="roberta-lora train --task TASK [options]  (see --help)")
    train.add_argument("--task", help="task name (sst2, mnli, squad_v2, ...) or a task TOML file "
                       "(not needed with --resume)")
    train.add_argument("--output-dir", help="run folder: a new folder or one of roberta-lora's runs "
                       "(default outputs/<task>/<timestamp>-<method>)")
    train.add_argument("--resume", action="store_const", const=True,
                       help="continue the run in --output-dir with the settings it was started with")
    train.add_argument("--overwrite", action="store_const", const=True,
                       help="start the run in --output-dir again (its files are deleted)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (transformers' and datasets' too)")
    add_training_flags(train)
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser("evaluate", help="evaluate a saved adapter on its validation split(s)")
    evaluate.add_argument("--adapter", required=True, help="adapter folder, or a Hub repo id user/name[@rev]")
    evaluate.add_argument("--data-dir", help="local data root (offline: required)")
    evaluate.add_argument("--model", help="base model (default: the one recorded in the adapter)")
    evaluate.add_argument("--task", help="task name or TOML (default: the adapter's)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="examples per forward pass (default 64)")
    evaluate.add_argument("--max-eval-samples", type=int, help="evaluate on the first N examples of each split")
    evaluate.add_argument("--output", help="write the metrics JSON here, and prediction files to <name>-predictions/ beside it")
    evaluate.add_argument("--allow-base-mismatch", action="store_true",
                          help="evaluate even if the adapter was trained on another base (warns)")
    evaluate.add_argument("--null-score-diff-threshold", type=float, default=0.0,
                          help="SQuAD v2: predict no answer when null score - best span > this (default 0.0)")
    evaluate.add_argument("--cache-dir", help="tokenized-data cache (default ~/.cache/roberta_lora)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_flags(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    predict = subparsers.add_parser("predict", help="labels, scores or answers for texts, as JSON lines")
    predict.add_argument("--adapter", required=True, help="adapter folder, or a Hub repo id user/name[@rev]")
    predict.add_argument("--model", help="base model (default: the one recorded in the adapter)")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text (repeatable); the question for SQuAD")
    source.add_argument("--input", help="file: JSON lines {text, text_pair} / {question, context}, or one text per line")
    predict.add_argument("--text-pair", action="append", help="second text (repeatable); the context for SQuAD")
    predict.add_argument("--allow-base-mismatch", action="store_true",
                         help="predict even if the adapter was trained on another base (warns)")
    add_device_flags(predict)
    predict.set_defaults(handler=run_predict)

    train_all = subparsers.add_parser("train-all", help="one adapter per task in turn, then a results table",
                                      usage="roberta-lora train-all [--tasks T1,T2] [options]  (see --help)")
    train_all.add_argument("--tasks", default=None, help="comma list (default: every GLUE task with data present)")
    train_all.add_argument("--methods", "--method", dest="methods", default="lora",
                           help="comma list of lora,head,full: the table puts them side by side")
    train_all.add_argument("--output-dir", help="where runs and train-all.md/.csv go (default outputs/train-all-<time>)")
    train_all.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_training_flags(train_all, with_method=False)
    train_all.set_defaults(handler=run_train_all)


def seed_list(text: str) -> list[int]:
    """argparse type of --seeds: "0,1,2" -> [0, 1, 2] (distinct integers in numpy's seed range)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s < 2**32 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds in [0, 2**32), got {text!r}")
    return seeds


def training_overrides(args: argparse.Namespace) -> dict:
    """The flags the user actually gave, as TrainConfig fields (None = not given); run_glue spellings
    (RUN_GLUE_ALIASES) are moved onto ours first."""
    resolve_run_glue_aliases(args)
    skip = {"command", "handler", "verbose", "config", "task", "tasks", "methods", "no_progress", "output_dir",
            "overwrite", "seeds", "grid", "optuna", "storage", "study_name", "heartbeat"}
    return {FLAG_FIELDS.get(k, k): v for k, v in vars(args).items() if k not in skip and v is not None}


def run_train(args: argparse.Namespace) -> int:
    overrides = {**training_overrides(args), "overwrite": args.overwrite}
    if args.init_from:  # a folder, or a hub repo id (cached offline)
        overrides["init_from"] = str(resolve_adapter(args.init_from))
    if args.resume:
        if not args.output_dir:
            raise ConfigError("--resume needs the run folder: --resume --output-dir outputs/<task>/<run>")
        config = resume_train_config(args.output_dir, {**overrides, "task": args.task}, args.config)
    elif not args.task:
        raise ConfigError("train needs --task (e.g. --task sst2), or --resume --output-dir RUN to continue a run")
    else:
        config = resolve_train_config(load_task(args.task), {**overrides, "task": args.task,
                                                             "output_dir": args.output_dir}, args.config)
    if args.seeds is not None:
        if args.seed is not None or args.resume:
            raise ConfigError("--seeds runs one training per seed into <output-dir>/seed-<n>/ (finished seeds are "
                              "kept, interrupted ones resumed); it does not go with --seed or --resume")
        from roberta_lora.training.seeds import train_seeds

        print_json(train_seeds(config, args.seeds, progress=not args.no_progress))
        return 0
    from roberta_lora.training.loop import train  # torch: only once the arguments are known to be sound

    result = train(config, progress=not args.no_progress)
    print_json({"run_dir": str(result.run_dir), "metrics": result.metrics, "best_epoch": result.best_epoch,
                "best_metrics": result.best_metrics, "trainable_parameters": result.trainable_parameters,
                "seconds": round(result.seconds, 1)})
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    check_device_flags(args)
    args.adapter = str(resolve_adapter(args.adapter))  # a folder, or a hub repo id (cached offline): checked first
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ConfigError(f"--data-dir {args.data_dir} is not a folder; pass the data root (e.g. ../shared/data/glue)")
    from roberta_lora.evaluation.evaluate import evaluate_adapter  # torch: only once the arguments are sound
    from roberta_lora.fileio import atomic_write_text

    output = Path(args.output) if args.output else None
    predictions = check_metrics_output(output) if output else None
    metrics = evaluate_adapter(args.adapter, data_dir=args.data_dir, model_id=args.model, task=args.task,
                               batch_size=args.batch_size, max_eval_samples=args.max_eval_samples,
                               output_dir=predictions,
                               allow_base_mismatch=args.allow_base_mismatch,
                               null_score_diff_threshold=args.null_score_diff_threshold, cache_dir=args.cache_dir,
                               progress=not args.no_progress, device=args.device, dtype=args.dtype)
    if output:
        atomic_write_text(output, json.dumps(metrics, indent=2) + "\n")
    print_json(metrics)
    note = split_note(args.adapter, args.max_eval_samples)
    if note:
        print_text(f"roberta-lora evaluate: note: {note}", file=sys.stderr)
    return 0


def split_note(adapter: str, max_eval_samples: int | None) -> str | None:
    """A line when this evaluation's rows differ from those the adapter's stored metrics were computed on."""
    from roberta_lora.model.config import read_adapter_config

    config, _ = read_adapter_config(adapter)
    stored, now = config.max_eval_samples, max_eval_samples
    if not config.metrics or stored == now:
        return None
    rows = {None: "the whole validation split"}
    return (f"these metrics are on {rows.get(now, f'the first {now} rows')}; the adapter's stored metrics (its card, "
            f"`inspect`) are on {rows.get(stored, f'the first {stored} rows')}"
            + (f": pass --max-eval-samples {stored} to compare them" if stored is not None else ""))


def check_metrics_output(output: Path) -> Path:
    """`evaluate --output FILE`: a new file, or the metrics JSON of an earlier evaluate (never a data file or
    a folder), checked before the evaluation runs; returns the predictions folder beside it."""
    predictions = output.parent / f"{output.stem}-predictions"
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; pass a file name for the metrics JSON (e.g. metrics.json)")
    if output.exists() and not _is_metrics_json(output):
        raise ConfigError(f"--output {output} exists and is not a metrics file written by evaluate; choose a new "
                          "file name (nothing was overwritten)")
    if predictions.exists() and not output.exists():
        raise ConfigError(f"{predictions} exists already; choose another --output name (its predictions go there)")
    parent = next((p for p in output.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"--output {output}: {parent} is not a writable folder; choose another path")
    return predictions


def _is_metrics_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(isinstance(v, (int, float)) for v in data.values())


def run_predict(args: argparse.Namespace) -> int:
    check_device_flags(args)
    args.adapter = str(resolve_adapter(args.adapter))  # checked before the heavy imports below
    from roberta_lora.evaluation.predict import Predictor, read_input_file, text_problem

    if args.text is not None:
        texts, pairs = args.text, args.text_pair
        for flag, values in (("--text", texts), ("--text-pair", pairs or [])):
            for number, text in enumerate(values, start=1):
                if (problem := text_problem(text, from_argv=True)) is not None:
                    which = f"{flag} {number}" if len(values) > 1 else flag
                    raise ConfigError(f"{which} {problem}; pass non-empty UTF-8 text")
    else:
        if args.text_pair:
            raise ConfigError("--text-pair goes with --text; with --input put text_pair in each JSON line")
        texts, pairs = read_input_file(args.input)
    predictor = Predictor(args.adapter, model_id=args.model, allow_base_mismatch=args.allow_base_mismatch,
                          device=args.device, dtype=args.dtype)
    for result in predictor.predict(texts, pairs):
        print_text(json.dumps(result, ensure_ascii=False))
    return 0


def run_train_all(args: argparse.Namespace) -> int:
    from roberta_lora.training.train_all import train_all

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None
    if tasks == []:
        raise ConfigError(f"--tasks {args.tasks!r} names no task; pass a comma list such as --tasks sst2,rte, or leave "
                          "it out for every GLUE task with data under --data-dir")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    table = train_all(tasks, methods, training_overrides(args), config_file=args.config,
                      output_dir=args.output_dir, progress=not args.no_progress, seeds=args.seeds)
    print_text(table.markdown)
    print_text(f"\nwritten: {table.markdown_path} and {table.csv_path}")
    return 0

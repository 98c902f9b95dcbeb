"""Reproduce the LoRA paper's RoBERTa GLUE table on one GPU: the paper recipe, 5 seeds, then the report.

    python scripts/reproduce_lora_paper.py --model /path/to/roberta-base --data-dir ../shared/data/glue --dry-run
    python scripts/reproduce_lora_paper.py --model /path/to/roberta-base --data-dir ../shared/data/glue

It first measures this machine's training speed at each task's sequence length (a few steps of the
real model), prints the plan with an estimate of the duration per task, then runs
`train-all --recipe lora-paper-base --seeds 0,1,2,3,4` (MNLI first: MRPC, RTE and STS-B warm-start from
its adapter of the same seed) and `report --compare lora-paper-base`. Killed, the same command
continues: finished seeds are kept and interrupted ones resumed. `--dry-run` stops after the plan.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# GLUE training-set sizes (rows of the original train files).
TRAIN_ROWS = {"mnli": 392_702, "qqp": 363_846, "qnli": 104_743, "sst2": 67_349, "cola": 8_551, "stsb": 5_749,
              "mrpc": 3_668, "rte": 2_490}
ORDER = ("mnli", "sst2", "cola", "qnli", "qqp", "mrpc", "rte", "stsb")  # MNLI first: the warm starts need it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local roberta-base (or roberta-large) checkpoint folder")
    parser.add_argument("--data-dir", required=True, help="GLUE data root (e.g. ../shared/data/glue)")
    parser.add_argument("--recipe", default="lora-paper-base", help="lora-paper-base or lora-paper-large")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma list of seeds (the paper: 5)")
    parser.add_argument("--tasks", default=",".join(ORDER), help="comma list of GLUE tasks")
    parser.add_argument("--output-dir", default="outputs/lora-paper", help="where runs and the report go")
    parser.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16", "fp16"),
                        help="bf16 on a recent GPU (the paper's scripts ran fp32)")
    parser.add_argument("--measure-steps", type=int, default=5, help="timed steps per sequence length")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the estimate, train nothing")
    return parser.parse_args(argv)


def seconds_per_example(model_dir: str, recipe: str, length: int, steps: int, precision: str) -> float:
    """Time a few training steps of the real model at `length` tokens, per example (warm-up excluded)."""
    from roberta_lora.data.recipes import load_recipe
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    settings = load_recipe(recipe).settings
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LoraWrapperRoberta(model_id=model_dir, lora_rank=settings["lora_rank"], lora_alpha=settings["lora_alpha"],
                               head="roberta", train_biases=False, train_layer_norms=False).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = 16
    ids = torch.randint(3, model.config.vocab_size, (batch, length), device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model(ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (steps * batch)


def missing_files(task: str, data_dir: str) -> list[str]:
    """The task's training and validation files that are not under `data_dir` (relative names)."""
    from roberta_lora.data.tasks import load_task

    spec = load_task(task)
    needed = ["train", *spec.validation_splits]
    return [spec.local_files[s] for s in needed if not (Path(data_dir) / spec.local_files[s]).is_file()]


def plan(args: argparse.Namespace, tasks: list[str], seeds: list[int]) -> float:
    """Print the estimate per task (a task whose files are missing is named, with the files, and left out of
    the total); returns the total in hours."""
    from roberta_lora.data.recipes import load_recipe

    recipe = load_recipe(args.recipe)
    speed = {}
    total = 0.0
    absent = {task: files for task in tasks if (files := missing_files(task, args.data_dir))}
    print(f"{'task':6} {'epochs':>6} {'max len':>7} {'train rows':>10} {'s/example':>9} {'hours (all seeds)':>18}")
    for task in tasks:
        settings = recipe.for_task(task)
        if task in absent:
            print(f"{task:6} {settings['epochs']:>6} {'':>7} {TRAIN_ROWS[task]:>10,} {'':>9} "
                  f"{'missing: ' + ', '.join(absent[task]):>18}")
            continue
        length = settings.get("max_length", 512)
        if length not in speed:
            speed[length] = seconds_per_example(args.model, args.recipe, length, args.measure_steps,
                                                args.mixed_precision)
        # Training plus one validation pass per epoch (about a tenth of the training rows, forward only).
        hours = TRAIN_ROWS[task] * 1.05 * settings["epochs"] * speed[length] * len(seeds) / 3600
        total += hours
        print(f"{task:6} {settings['epochs']:>6} {length:>7} {TRAIN_ROWS[task]:>10,} {speed[length]:>9.4f} "
              f"{hours:>18.1f}")
    print(f"total: {total:.0f} h on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'this CPU'} "
          f"for {len(seeds)} seeds" + (f", without {', '.join(absent)} (their files are not under {args.data_dir}: "
                                        "put them there, or pass --tasks without them)" if absent else ""))
    return total


def main(argv: list[str] | None = None) -> int:
    from roberta_lora.errors import RobertaLoraError

    args = parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    unknown = [t for t in tasks if t not in TRAIN_ROWS]
    if unknown:
        print(f"reproduce_lora_paper.py: error: --tasks {unknown}: expected GLUE tasks from {list(ORDER)}",
              file=sys.stderr)
        return 2
    try:
        plan(args, tasks, seeds)
    except RobertaLoraError as error:  # a bad --model, --data-dir or --recipe: one line, no traceback
        print(f"reproduce_lora_paper.py: error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    from roberta_lora.cli.main import main as cli

    common = ["--model", args.model, "--data-dir", args.data_dir, "--output-dir", args.output_dir,
              "--mixed-precision", args.mixed_precision]
    code = cli(["train-all", "--tasks", ",".join(tasks), "--recipe", args.recipe, "--seeds", args.seeds, *common])
    if code == 0:
        compare = args.recipe if args.recipe.startswith("lora-paper") else "lora-paper-base"
        code = cli(["report", args.output_dir, "--compare", compare])
    return code


if __name__ == "__main__":
    sys.exit(main())

"""CLI: `sweep` (a grid or Optuna's sampler over ordinary runs, several seeds each)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from roberta_lora.cli.output import print_text, world_size
from roberta_lora.cli.train import add_training_flags, training_overrides
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import ConfigError
from roberta_lora.training.config import resolve_train_config


def register(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser(
        "sweep", help="train a grid (or Optuna trials) of settings, several seeds each, and rank them",
        usage="roberta-lora sweep --task TASK (--grid NAME=V1,V2 ... | --optuna N) [options]  (see --help)",
        description="Every trial is an ordinary run in <output-dir>/trial-<k>/seed-<n>/: a sweep started again "
                    "skips finished seeds and resumes interrupted ones. The table ranks trials by the median of "
                    "the task's main metric over the seeds, each at its best epoch.",
    )
    sweep.add_argument("--task", help="task name (sst2, rte, ...) or a task TOML file (required)")
    sweep.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                       help="a setting and its values, e.g. --grid lr=1e-4,5e-4 --grid rank=4,8 (repeatable)")
    sweep.add_argument("--optuna", type=int, metavar="N",
                       help="N trials of Optuna's sampler over the grid's values, pruned after each epoch, "
                            "instead of every combination (needs optuna: pip install -e '.[sweep]')")
    sweep.add_argument("--storage", metavar="URL",
                       help="share the study with other sweep processes, on this machine or others: "
                            "sqlite:///PATH, journal:PATH (a file on a shared filesystem), postgresql://... or "
                            "mysql+pymysql://...; each trial and seed runs once, a dead worker's trial is retried "
                            "(needs optuna; see docs/guide/sweeps.md)")
    sweep.add_argument("--study-name", default="sweep", help="the study's name in --storage (default sweep)")
    sweep.add_argument("--heartbeat", type=float, default=60, metavar="SECONDS",
                       help="with --storage: how often a worker says it is alive; a trial silent for two "
                            "heartbeats is retried by another worker (default 60)")
    sweep.add_argument("--output-dir", help="sweep folder (default outputs/sweeps/<task>-<timestamp>)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_training_flags(sweep)
    sweep.set_defaults(handler=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    processes = world_size()
    if processes > 1 and (args.storage is not None or args.optuna is not None):
        which = "--storage" if args.storage is not None else "--optuna"
        raise ConfigError(f"sweep {which} under a launch of {processes} processes: each process would take another "
                          "trial and they would train them together; start one sweep worker per GPU instead "
                          "(CUDA_VISIBLE_DEVICES=<i> roberta-lora sweep ... --storage URL), or launch a --grid "
                          "sweep, whose processes train each trial together")
    from roberta_lora.training.shared_sweep import check_heartbeat, check_storage_url
    from roberta_lora.training.sweep import grid_sweep, optuna_sweep, parse_grid, storage_sweep

    if args.optuna is not None and not 1 <= args.optuna <= 100_000:
        raise ConfigError(f"--optuna {args.optuna}: expected a number of trials from 1 to 100000")
    if args.storage is not None:
        check_storage_url(args.storage)
        heartbeat = check_heartbeat(args.heartbeat)
    elif args.study_name != "sweep" or args.heartbeat != 60:
        raise ConfigError("--study-name and --heartbeat only apply with --storage URL (a study shared by workers)")
    overrides = training_overrides(args)  # run_glue spellings (--task_name, ...) become ours here
    if not args.task:
        raise ConfigError("sweep needs --task (e.g. --task rte)")
    grid = parse_grid(args.grid)
    spec = load_task(args.task)
    root = Path(args.output_dir or Path("outputs") / "sweeps" / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    base = resolve_train_config(spec, {**overrides, "task": args.task, "output_dir": str(root)}, args.config)
    seeds = args.seeds or [base.seed]
    progress = not args.no_progress
    if args.storage is not None:
        rows = storage_sweep(base, grid, seeds, root, args.optuna, args.storage, args.study_name,
                             heartbeat, progress=progress)
    elif args.optuna:
        rows = optuna_sweep(base, grid, seeds, root, args.optuna, progress=progress)
    else:
        rows = grid_sweep(base, grid, seeds, root, progress=progress)
    print_text((root / "sweep.md").read_text())
    print_text(f"written: {root / 'sweep.md'} and {root / 'sweep.csv'} ({len(rows)} trials)")
    return 0

"""CLI: `data-info` (check data files before training) and `score` (score a predictions file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from roberta_lora.cli.output import print_json
from roberta_lora.data.tasks import available_tasks, load_task
from roberta_lora.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser("data-info", help="row counts and label distribution of a task's splits, as JSON")
    info.add_argument("--task", required=True, help=f"one of {', '.join(available_tasks())}, or a task TOML")
    info.add_argument("--data-dir", help="local data root (default: the hub)")
    info.set_defaults(handler=run_data_info)

    score = subparsers.add_parser("score", help="score a predictions file with the official metrics, as JSON")
    score.add_argument("--task", required=True, help="task name or TOML whose gold data and metrics to use")
    score.add_argument("--data", required=True, help="SQuAD: the dataset JSON; GLUE: the gold file or data root")
    score.add_argument("--predictions", required=True,
                       help="SQuAD: JSON {id: answer}; GLUE: JSON lines {index, prediction} or TSV index/prediction")
    score.add_argument("--na-probs", help="SQuAD v2: JSON {id: no-answer probability}")
    score.add_argument("--na-prob-thresh", type=float, default=1.0, help="SQuAD v2 (official default 1.0)")
    score.add_argument("--split", help="GLUE: which validation split (default: the first)")
    score.set_defaults(handler=run_score)


def run_data_info(args: argparse.Namespace) -> int:
    from roberta_lora.data.readers import data_info

    if args.data_dir is not None and not Path(args.data_dir).exists():
        raise DataError("no such file or folder; pass the data root with --data-dir (e.g. ../shared/data/glue)",
                        args.data_dir)
    info = data_info(load_task(args.task), args.data_dir)
    print_json(info)
    if info["missing"]:  # the JSON lists why; the exit code and one line tell a script or a person
        where = f"--data-dir {args.data_dir}" if args.data_dir else "the hub (no --data-dir)"
        print(f"roberta-lora data-info: error: {len(info['missing'])} of {len(info['missing']) + len(info['splits'])} "
              f"splits of {info['task']} were not found in {where}: {', '.join(info['missing'])} "
              "(see \"missing\" above)", file=sys.stderr)
        return 1
    return 0


def run_score(args: argparse.Namespace) -> int:
    from roberta_lora.evaluation.scoring import score_with_notes

    metrics, notes = score_with_notes(load_task(args.task), args.data, args.predictions, args.na_probs, args.split,
                                      args.na_prob_thresh)
    print_json({name: None if name in notes else value for name, value in metrics.items()})  # NaN is not JSON
    if notes:  # the JSON says null; the exit code and one line tell a script or a person why
        by_reason: dict[str, list[str]] = {}
        for name, why in notes.items():
            by_reason.setdefault(why, []).append(name)
        print("roberta-lora score: error: " + "; ".join(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} "
                                                       f"not finite (null above): {why}"
                                                       for why, names in by_reason.items()), file=sys.stderr)
        return 1
    return 0

"""CLI: `report`, the finished runs under a folder as results.md, results.csv and results.png."""

from __future__ import annotations

import argparse
import sys

from roberta_lora.cli.output import print_text


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report", help="collect finished runs into results.md/.csv/.png, optionally compared with the paper",
        description="Collect every finished run under OUTPUT_DIR (seed groups with summary.json, and single run "
                    "folders) into one table: per task the median over seeds of the score at each run's best "
                    "epoch, the seeds' spread and, with --compare, the published number and the difference. "
                    "Writes results.md, results.csv and results.png and prints the table.",
    )
    report.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder holding the runs (searched recursively)")
    report.add_argument("--compare", metavar="NAME",
                        help="compare with the published numbers NAME of recipes/paper_results.toml "
                             "(e.g. lora-paper-base)")
    report.add_argument("--output", metavar="DIR",
                        help="write results.md/.csv/.png here (default OUTPUT_DIR); nothing else is written")
    report.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from roberta_lora.data.recipes import check_published_name
    from roberta_lora.training.report_checks import check_runs_root

    check_runs_root(args.output_dir)  # before the heavy imports below: a mistake is answered at once
    if args.compare is not None:
        check_published_name(args.compare)
    from roberta_lora.training.report import write_report  # torch-heavy: only when the command runs

    report = write_report(args.output_dir, compare=args.compare, destination=args.output)
    print_text(report.markdown, end="")
    print_text("wrote " + ", ".join(str(p) for p in report.paths), file=sys.stderr)
    return 0

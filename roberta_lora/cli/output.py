"""What the commands print."""

from __future__ import annotations

import json
import os


def is_main_process() -> bool:
    """False in the other processes of a multi-process launch (accelerate launch / torchrun set RANK), which
    then print no result and log only errors: one copy of everything, from process 0."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def print_json(data: object) -> None:
    """Print one JSON document (the machine-readable output of most commands), from the main process only."""
    if is_main_process():
        print(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False))


def silence_progress_bars() -> None:
    """`--no-progress`: ours are switched off by the caller; transformers' and datasets' here too."""
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()

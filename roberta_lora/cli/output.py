"""What the commands print."""

from __future__ import annotations

import json
import os
import sys


def is_main_process() -> bool:
    """False in the other processes of a multi-process launch (accelerate launch / torchrun set RANK), which
    then print no result and log only errors: one copy of everything, from process 0."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def world_size() -> int:
    """How many processes the launcher (accelerate launch / torchrun: WORLD_SIZE) started; 1 without one."""
    text = os.environ.get("WORLD_SIZE", "1").strip()
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else 1


def print_text(text: str = "", end: str = "\n", file=None) -> None:
    """`print`, from the main process only: a multi-process launch prints each table and note once."""
    if is_main_process():
        print(text, end=end, file=file if file is not None else sys.stdout)


def print_json(data: object) -> None:
    """Print one JSON document (the machine-readable output of most commands), from the main process only."""
    if is_main_process():
        print(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False))


def silence_progress_bars() -> None:
    """`--no-progress` (every command; `main` calls this once): tqdm's, huggingface_hub's, datasets' and
    transformers' bars off. The environment covers libraries imported later (a fresh process imports them
    after this, so nothing heavy is imported here); those already imported (another caller of `main` in
    this process) are switched off through their own functions. Our own bars: `progress=False`."""
    os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

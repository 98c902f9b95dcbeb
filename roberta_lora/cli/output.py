"""What the commands print."""

from __future__ import annotations

import json


def print_json(data: object) -> None:
    """Print one JSON document (the machine-readable output of most commands)."""
    print(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False))


def silence_progress_bars() -> None:
    """`--no-progress`: ours are switched off by the caller; transformers' and datasets' here too."""
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()

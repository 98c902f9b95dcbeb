"""What the commands print."""

from __future__ import annotations

import json


def print_json(data: object) -> None:
    """Print one JSON document (the machine-readable output of most commands)."""
    print(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False))

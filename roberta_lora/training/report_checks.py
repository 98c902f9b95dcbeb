"""What `report` checks before any heavy import, so that the CLI answers a mistake at once (this module
imports nothing heavy; `training.report` calls the same checks for the Python API)."""

from __future__ import annotations

from pathlib import Path

from roberta_lora.errors import ConfigError


def check_runs_root(output_dir: str | Path) -> Path:
    """`output_dir` as a Path; ConfigError unless it is a folder."""
    root = Path(output_dir)
    if not root.is_dir():
        raise ConfigError(f"OUTPUT_DIR {root} {'is a file' if root.exists() else 'does not exist'}; expected the "
                          "folder holding your runs (e.g. outputs/): pass the folder train or train-all wrote into")
    return root

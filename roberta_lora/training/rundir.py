"""Run folders: `train` writes only into a new folder or into a run folder it made itself, and never
two processes into the same one.

A run folder carries a small marker file written when the run is created, so `train` recognises its
own folders (and those of earlier versions, by their config.json). Anything else that already holds
files (a model checkpoint, a home directory, the current directory) is refused before a byte is
written; a run with a finished epoch is continued only with `--resume` and started again only with
`--overwrite` (one killed before its first checkpoint simply starts again). While a run trains, its main process holds an OS file lock in the folder: a second
process is refused at once, and a killed run never leaves the lock stuck (the kernel releases it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from roberta_lora._version import __version__
from roberta_lora.errors import ConfigError
from roberta_lora.training.checkpoints import STATE_NAME

MARKER = ".roberta-lora-run"
LOCK = ".roberta-lora.lock"
CONFIG = "config.json"
FINAL_ADAPTER = "adapter"  # written once, after the last epoch: its presence means the run finished


def is_run_folder(run_dir: Path) -> bool:
    """True for a folder `train` made: it has the marker, or an earlier version's run config."""
    if (run_dir / MARKER).is_file():
        return True
    try:
        config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "resolved" in config and "task" in config


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder `train` must not write into, reading only (safe on every process).

    Raises:
        ConfigError: saying what the folder holds and which flag or folder to use instead.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--output-dir {run_dir} is a file, not a folder; choose a new folder name")
    held = _contents(run_dir)
    if not held:
        if resume:
            raise ConfigError(f"cannot --resume {run_dir}: it holds no run; leave out --resume to start one there")
        return
    if not is_run_folder(run_dir):
        raise ConfigError(
            f"--output-dir {run_dir} already holds files that are not a roberta-lora run ({_preview(held)}); "
            "train writes only into a new folder or a run folder it made: choose a new --output-dir"
        )
    if resume:
        if (run_dir / FINAL_ADAPTER).is_dir():
            raise ConfigError(f"the run in {run_dir} has finished (its final adapter is in {run_dir / FINAL_ADAPTER}); "
                              "there is nothing to resume: start a new run with another --output-dir")
        return
    # The checkpoint's state file is the commit point of a finished epoch; a run killed before its first
    # one has nothing worth keeping, so the same command simply starts it again.
    if not overwrite and (run_dir / "checkpoint" / STATE_NAME).is_file():
        raise ConfigError(
            f"{run_dir} already holds a training run; pass --resume to continue it, --overwrite to start it again "
            "(its files are deleted), or choose another --output-dir"
        )


def claim_run_folder(run_dir: Path, overwrite: bool) -> FileLock:
    """Create (or take over) the run folder for this process and lock it; returns the held lock.

    Call after `check_run_folder`, on the main process only. With `overwrite` the earlier run's files
    are deleted, after the lock is held (never while another process trains there). When the folder
    cannot be written (read-only, disk full), nothing is left behind.
    """
    created = not run_dir.exists()
    lock = FileLock(run_dir / LOCK, timeout=0)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise ConfigError(f"another roberta-lora process is training into {run_dir} right now; wait for it to finish "
                          "or choose another --output-dir") from None
    except OSError as error:
        _undo(run_dir, created)
        raise _unwritable(run_dir, error) from None
    try:
        if overwrite:
            for item in _contents(run_dir):
                path = run_dir / item
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if not (run_dir / MARKER).is_file():
            marker = {"format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "package_version": __version__}
            (run_dir / MARKER).write_bytes((json.dumps(marker) + "\n").encode())
    except OSError as error:
        lock.release()
        _undo(run_dir, created)
        raise _unwritable(run_dir, error) from None
    return lock


def _unwritable(run_dir: Path, error: OSError) -> ConfigError:
    return ConfigError(f"cannot write to the output folder {run_dir} ({error.strerror or error}); "
                       "choose a writable --output-dir")


def _undo(run_dir: Path, created: bool) -> None:
    """Remove what a failed claim made: the lock and marker files, and the folder if it was new."""
    for name in (LOCK, MARKER):
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()
    if created:
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def _contents(run_dir: Path) -> list[str]:
    """The names in the folder, our marker and lock files left out ([] when it does not exist)."""
    try:
        return sorted(name for name in os.listdir(run_dir) if name not in (MARKER, LOCK))
    except FileNotFoundError:
        return []
    except OSError as error:  # a file where a parent folder should be, no permission, a name too long
        raise _unwritable(run_dir, error) from None


def _preview(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

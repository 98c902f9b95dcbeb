"""Run folders: `train` writes only into a new folder or into a run folder it made itself, never two
processes into the same one, and never deletes what it did not write.

A run folder carries a small marker file written when the run is created, so `train` recognises its
own folders (and those of earlier versions, by their config.json). The marker also lists the entries
the run wrote (`record_written`); together with the names every run writes (`RUN_OUTPUTS`) they are
the run's own files. Anything else that already holds files (a model checkpoint, a home directory,
the current directory) is refused before a byte is written, and so is a folder inside another run.
A run with a finished epoch is continued only with `--resume` and started again only with
`--overwrite`, which deletes the run's own files only: it refuses, naming them, when the folder also
holds a file `train` did not write (a user's notes, also inside the run's adapter folders) or another
run folder anywhere below (one killed before its first checkpoint simply starts again). While a run
trains, its main process holds an OS file lock in the folder: a second process is refused at once,
and a killed run never leaves the lock stuck (the kernel releases it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from roberta_lora._version import __version__
from roberta_lora.errors import ConfigError
from roberta_lora.fileio import atomic_write_text
from roberta_lora.model.config import CONFIG_NAME, WEIGHTS_NAME
from roberta_lora.training.checkpoints import STATE_NAME

MARKER = ".roberta-lora-run"
LOCK = ".roberta-lora.lock"
CONFIG = "config.json"
FINAL_ADAPTER = "adapter"  # written once, after the last epoch: its presence means the run finished
# What `train` writes at the top of a run folder, recorded in the marker or not (runs of earlier
# versions, a loop that writes a new entry without `record_written`), so `--overwrite` may delete them;
# also the checkpoints kept by --save-total-limit, checkpoint-<step>/ (`_ARCHIVE`).
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "train.log", "curves.png", "best", FINAL_ADAPTER, "checkpoint", "eval")
_ARCHIVE = re.compile(r"checkpoint-[0-9]+")
# What the adapter folders among them hold; anything else there is a user's (save_adapter keeps such files).
_ADAPTER_FILES = frozenset({WEIGHTS_NAME, CONFIG_NAME, "README.md"})
_EXPECTED = {"best": _ADAPTER_FILES, FINAL_ADAPTER: _ADAPTER_FILES, "checkpoint": frozenset({STATE_NAME, "adapter"}),
             "checkpoint/adapter": _ADAPTER_FILES}
# Hidden leftovers of writes killed midway: `.NAME.XXXXXXXX.tmp...` files, `.NAME.new-/old-XXXXXXXX` and
# `.NAME.tmp` folders.
_LEFTOVER = re.compile(r"\.(?P<name>.+?)\.(?:[^.]+\.tmp.*|tmp|(?:new|old)-[0-9a-f]{8})")


def is_write_leftover(name: str) -> bool:
    """True for the hidden name of a write in progress or killed midway (an atomic write's temporary file,
    a folder swap's staging folder), which says nothing about whose folder it is in."""
    return _LEFTOVER.fullmatch(name) is not None


def is_run_folder(run_dir: Path) -> bool:
    """True for a folder `train` made: it has the marker, or an earlier version's run config."""
    with contextlib.suppress(OSError):
        if (run_dir / MARKER).is_file():
            return True
    try:
        config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "resolved" in config and "task" in config


def enclosing_run(path: Path) -> Path | None:
    """The run folder that `path` lies inside (its nearest ancestor that is one), or None."""
    for parent in Path(os.path.abspath(path)).parents:
        if is_run_folder(parent):
            return parent
    resolved = Path(path).resolve()  # a symlink into a run folder is inside it too
    return next((parent for parent in resolved.parents if is_run_folder(parent)), None)


def record_written(run_dir: Path, name: str) -> Path:
    """Record in the run's marker that the run writes the top-level entry `name` (its first path part);
    returns `run_dir / name`. Call on the main process, before writing a new entry into the run folder:
    `--overwrite` deletes only recorded entries and `RUN_OUTPUTS`. Idempotent and cheap."""
    top = Path(name).parts[0]
    marker = _read_marker(run_dir)
    if top not in marker["written"]:
        marker["written"] = sorted({*marker["written"], top})
        atomic_write_text(run_dir / MARKER, json.dumps(marker) + "\n")
    return run_dir / name


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder `train` must not write into, reading only (safe on every process).

    Raises:
        ConfigError: saying what the folder holds and which flag or folder to use instead.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--output-dir {run_dir} is a file, not a folder; choose a new folder name")
    if not is_run_folder(run_dir):
        outer = enclosing_run(run_dir)
        if outer is not None:
            raise ConfigError(
                f"--output-dir {run_dir} is inside the run folder {outer}; a new run is never started inside "
                f"another run (that run's --overwrite would have to delete it): choose a folder outside {outer}, "
                f"e.g. {outer.parent / (outer.name + '-' + Path(os.path.abspath(run_dir)).name)}"
            )
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
    if overwrite:
        _refuse_foreign(run_dir)
    # The checkpoint's state file is the commit point of a finished epoch; a run killed before its first
    # one has nothing worth keeping, so the same command simply starts it again.
    elif (run_dir / "checkpoint" / STATE_NAME).is_file():
        raise ConfigError(
            f"{run_dir} already holds a training run; pass --resume to continue it, --overwrite to start it again "
            "(the files the run wrote are deleted), or choose another --output-dir"
        )


def claim_run_folder(run_dir: Path, overwrite: bool) -> FileLock:
    """Create (or take over) the run folder for this process and lock it; returns the held lock.

    Call after `check_run_folder`, on the main process only. With `overwrite` the earlier run's own
    files are deleted, after the lock is held (never while another process trains there); a file a
    user added since the check is refused as the check refuses it, before anything is deleted. When
    the folder cannot be written (read-only, disk full), nothing is left behind.
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
            _refuse_foreign(run_dir)
            for item in _contents(run_dir):
                path = run_dir / item
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if overwrite or not (run_dir / MARKER).is_file():
            marker = {"format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "package_version": __version__,
                      "written": []}
            atomic_write_text(run_dir / MARKER, json.dumps(marker) + "\n")
    except ConfigError:
        lock.release()
        raise
    except OSError as error:
        lock.release()
        _undo(run_dir, created)
        raise _unwritable(run_dir, error) from None
    return lock


def foreign_entries(run_dir: Path) -> tuple[list[str], list[str]]:
    """(files the run did not write, run folders below it), as paths relative to `run_dir`.

    The run's own entries are those its marker records and `RUN_OUTPUTS` (with hidden leftovers of
    their atomic writes, and the TensorBoard folder accelerate names after the run); inside its
    adapter folders and checkpoint only their own files count as the run's.
    """
    own = {*RUN_OUTPUTS, *_read_marker(run_dir)["written"], MARKER}  # MARKER: a killed update's leftover

    def is_own(name: str) -> bool:
        leftover = _LEFTOVER.fullmatch(name)
        return name in own or _ARCHIVE.fullmatch(name) is not None or bool(leftover and is_own(leftover["name"]))

    foreign, runs = [], []
    for name in _contents(run_dir):
        path = run_dir / name
        if is_own(name) or _is_tensorboard_folder(run_dir, name):
            if not path.is_symlink() and path.is_dir():
                foreign += _unexpected(run_dir, name, "checkpoint" if _ARCHIVE.fullmatch(name) else name)
                runs += _runs_below(run_dir, name)
        elif is_run_folder(path):
            runs.append(name)
        else:
            foreign.append(name + ("/" if path.is_dir() else ""))
    return foreign, runs


def _refuse_foreign(run_dir: Path) -> None:
    foreign, runs = foreign_entries(run_dir)
    if not foreign and not runs:
        return
    held = []
    if foreign:
        held.append(f"files train did not write ({_preview(foreign)})")
    if runs:
        held.append(f"{'another run folder' if len(runs) == 1 else 'other run folders'} ({_preview(runs)})")
    raise ConfigError(
        f"--overwrite deletes only the files the run in {run_dir} wrote, but the folder also holds "
        + " and ".join(held) + f"; move them out of {run_dir} (or delete them yourself) and run again, "
        "or choose another --output-dir"
    )


def _unexpected(run_dir: Path, name: str, kind: str) -> list[str]:
    """Entries inside the run's folder `name` (a folder of `kind`: a key of `_EXPECTED`) that the run never
    writes there, recursing into its expected subfolders; [] for a folder whose contents are all the
    run's (eval/, TensorBoard)."""
    expected = _EXPECTED.get(kind)
    if expected is None:
        return []
    found = []
    for entry in _listdir(run_dir / name):
        leftover = _LEFTOVER.fullmatch(entry)
        if entry in expected or (leftover and leftover["name"] in expected):
            path = run_dir / name / entry
            if f"{kind}/{entry}" in _EXPECTED and path.is_dir() and not path.is_symlink():
                found += _unexpected(run_dir, f"{name}/{entry}", f"{kind}/{entry}")
        else:
            found.append(f"{name}/{entry}")
    return found


def _runs_below(run_dir: Path, name: str) -> list[str]:
    """Run folders anywhere inside `run_dir / name` (symlinks not followed)."""
    runs = []
    for folder, dirs, _ in os.walk(run_dir / name, followlinks=False):
        for sub in list(dirs):
            if is_run_folder(Path(folder) / sub):
                runs.append(os.path.relpath(os.path.join(folder, sub), run_dir))
                dirs.remove(sub)
    return runs


def _is_tensorboard_folder(run_dir: Path, name: str) -> bool:
    """accelerate's TensorBoard tracker writes `<run folder>/<run name>/` (the run name is the folder's)."""
    folder = run_dir / name
    if name != Path(os.path.abspath(run_dir)).name or folder.is_symlink() or not folder.is_dir():
        return False
    files = [f for _, _, names in os.walk(folder) for f in names]
    return bool(files) and all(f.startswith("events.out.tfevents.") for f in files)


def _read_marker(run_dir: Path) -> dict:
    """The marker's content, with `written` a list of names (an earlier version's or a broken marker: [])."""
    try:
        marker = json.loads((run_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict):
        marker = {"format": 1}
    written = marker.get("written")
    marker["written"] = [n for n in written if isinstance(n, str)] if isinstance(written, list) else []
    return marker


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


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _preview(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

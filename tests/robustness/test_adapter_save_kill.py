"""SIGKILL an adapter save before each of its filesystem steps: the folder holds the old adapter or the new
one, whole, every time, and the user's own files in it survive.

A driver process (`sys.executable -c DRIVER`) builds two tiny adapters A and B once, then for N = 1, 2, ...
forks a child that saves B (with a README.md) over a copy of A's folder (A, its README.md and a user's
notes.txt) and SIGKILLs itself just before the N-th filesystem step of the save: os.mkdir, os.replace,
os.rename, os.link, os.symlink, os.fsync, os.unlink, os.rmdir (shutil.rmtree's steps) or the renameat2
exchange. The loop ends at the first N the save survives. Forking from one process that imported torch
once keeps each kill at a few milliseconds. Both swaps are exercised: the atomic exchange (renameat2) and
the two-rename fallback used where the system or filesystem has none.

The checks run here, afterwards, on every killed folder: it loads (after `restore_interrupted_replace`,
which every read and save runs first) and holds exactly A or exactly B with the matching README.md; once
B is seen, A never comes back; notes.txt is byte-identical; and the next save over the killed state
gives B with no hidden temporary folder left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import roberta_lora.fileio as fileio
from roberta_lora.errors import AdapterError
from roberta_lora.fileio import replace_folder_atomically, restore_interrupted_replace
from roberta_lora.model.adapter_files import read_adapter_tensors, save_adapter_files
from roberta_lora.model.config import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="SIGKILL and fork are POSIX")

MODES = ["exchange", "fallback"]
NOTES = b"the user's own notes\n\x00\xff (not ours: must survive every save)\n"
FILES = sorted([WEIGHTS_NAME, CONFIG_NAME, "README.md", "notes.txt"])

DRIVER = r"""
import json, os, shutil, signal, sys, traceback
from pathlib import Path
import roberta_lora.fileio as fileio
from roberta_lora.model.toy import toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta

root = Path(sys.argv[1])
models = {label: LoraWrapperRoberta(model_id=toy_config(400), seed=seed) for label, seed in (("A", 1), ("B", 2))}
for label, model in models.items():
    model.save_adapter(root / f"ref-{label}" / "adapter", extra_files={"README.md": f"adapter {label}\n"})
(root / "ref-A" / "adapter" / "notes.txt").write_bytes(@NOTES@)
STEPS = ("mkdir", "replace", "rename", "link", "symlink", "fsync", "unlink", "rmdir")

def die_before_step(n):
    count = 0
    def counted(real):
        def step(*args, **kwargs):
            nonlocal count
            count += 1
            if count == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return step
    for name in STEPS:
        setattr(os, name, counted(getattr(os, name)))
    exchange = fileio._renameat2()
    fileio._renameat2 = lambda: None if exchange is None else counted(exchange)

def save_b(mode, n, folder):
    if mode == "fallback":
        fileio._renameat2 = lambda: None
    die_before_step(n)
    models["B"].save_adapter(folder, extra_files={"README.md": "adapter B\n"})

for mode in sys.argv[2:]:
    for n in range(1, 500):
        work = root / mode / str(n)
        shutil.copytree(root / "ref-A", work, symlinks=True)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                save_b(mode, n, work / "adapter")
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        print(json.dumps({"mode": mode, "n": n, "exit": code}), flush=True)
        if code != -signal.SIGKILL:
            break
"""


@pytest.fixture(scope="module")
def killed_saves(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("save-kill")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-c", DRIVER.replace("@NOTES@", repr(NOTES)), str(root), *MODES],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, [json.loads(line) for line in done.stdout.splitlines()]


def load(folder: Path) -> tuple[object, dict[str, torch.Tensor], str]:
    """(config, tensors, README text) of an adapter folder, read the way the toolkit reads it."""
    config, digest = read_adapter_config(folder)
    return config, read_adapter_tensors(folder, digest), (folder / "README.md").read_text()


def which_adapter(folder: Path, refs: dict[str, tuple]) -> str:
    """"A" or "B": the one adapter the folder holds exactly; fails on a mix, an error or a lost file."""
    assert sorted(os.listdir(folder)) == FILES, f"{folder}: files lost or a temporary file inside"
    assert (folder / "notes.txt").read_bytes() == NOTES, f"{folder}: the user's notes changed"
    config, tensors, readme = load(folder)
    for label, (ref_config, ref_tensors, ref_readme) in refs.items():
        if tensors.keys() == ref_tensors.keys() and all(torch.equal(tensors[k], ref_tensors[k]) for k in tensors):
            assert (config, readme) == (ref_config, ref_readme), f"{folder}: tensors of {label}, not its config/card"
            return label
    raise AssertionError(f"{folder}: tensors are neither A's nor B's")


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("mode", MODES)
def test_a_save_killed_before_any_step_leaves_the_old_or_the_new_adapter_whole(killed_saves, mode,
                                                                               monkeypatch) -> None:
    root, runs = killed_saves
    runs = [run for run in runs if run["mode"] == mode]
    assert [run["exit"] for run in runs] == [-signal.SIGKILL] * (len(runs) - 1) + [0], runs
    assert len(runs) >= 10, f"only {len(runs) - 1} kill points: the step counting missed the save's steps"
    if mode == "exchange" and fileio._renameat2() is None:
        pytest.skip("no renameat2 here (not Linux, or glibc < 2.28): only the fallback can be tested")
    if mode == "fallback":
        monkeypatch.setattr(fileio, "_renameat2", lambda: None)
    refs = {label: load(root / f"ref-{label}" / "adapter") for label in "AB"}
    set_aside = [name for run in runs for name in hidden(root / mode / str(run["n"])) if ".old-" in name]
    assert bool(set_aside) == (mode == "fallback"), f"{mode}: the swap did not take the path under test"
    seen = []
    for run in runs:
        work = root / mode / str(run["n"])
        if run["exit"] == 0:
            assert hidden(work) == [], "a finished save leaves no temporary folder"
        if not (work / "adapter").exists():  # only ever between the fallback's two renames
            assert mode == "fallback" and len([n for n in hidden(work) if ".old-" in n]) == 1, hidden(work)
        then = work.with_name(f"{run['n']}-next")
        shutil.copytree(work, then, symlinks=True)
        # The next read of the killed state.
        restore_interrupted_replace(work / "adapter")
        seen.append(which_adapter(work / "adapter", refs))
        # The next save over the killed state: the folder that was set aside comes back first, leftovers go.
        config_b, tensors_b, readme_b = refs["B"]
        save_adapter_files(then / "adapter", tensors_b, config_b, {"README.md": readme_b})
        assert which_adapter(then / "adapter", refs) == "B" and hidden(then) == []
    assert seen[0] == "A" and seen[-1] == "B" and seen == sorted(seen), f"A..A then B..B, got {seen}"


def test_non_finite_tensors_are_refused_and_leave_the_old_folder_byte_identical(killed_saves, tmp_path) -> None:
    root, _ = killed_saves
    shutil.copytree(root / "ref-A", tmp_path, symlinks=True, dirs_exist_ok=True)
    before = {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    config, tensors, _ = load(root / "ref-B" / "adapter")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().index_fill_(0, torch.tensor([0]), float("nan"))
    with pytest.raises(AdapterError, match=rf"not saving .*{name}.*NaN or infinite.*lower the learning rate"):
        save_adapter_files(tmp_path / "adapter", tensors, config, {"README.md": "adapter B\n"})
    after = {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before and hidden(tmp_path) == []


# ----------------------------------------------------------------------------- the folder swap on its own
def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def test_only_our_own_leftovers_are_removed_and_nothing_is_followed(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    parent = tmp_path / "run"
    (parent / "adapter" / "sub").mkdir(parents=True)
    write(parent / "adapter", {"old.txt": "old", "notes.txt": "mine"})
    (parent / "adapter" / "sub" / "deep.txt").write_text("deep")
    (parent / "adapter" / "link").symlink_to(outside)
    ours = parent / ".adapter.new-0123abcd"
    ours.mkdir()
    (ours / "half").write_text("a killed save's leftover")
    not_ours = [".adapter.new-0123abcdX", ".adapter.tmp-0123abcd", ".other.new-0123abcd", ".adapter.old-fedcba98"]
    for name in not_ours[:3]:
        (parent / name).mkdir()
    (parent / not_ours[3]).symlink_to(outside)  # named like ours, but a link: never followed or deleted

    replace_folder_atomically(parent / "adapter", lambda tmp: write(tmp, {"old.txt": "new"}))

    assert hidden(parent) == sorted(not_ours)
    assert (outside / "keep.txt").read_text() == "not ours"
    adapter = parent / "adapter"
    assert (adapter / "old.txt").read_text() == "new" and (adapter / "notes.txt").read_text() == "mine"
    assert (adapter / "sub" / "deep.txt").read_text() == "deep"
    assert (adapter / "link").is_symlink() and os.readlink(adapter / "link") == str(outside)


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EIO])
def test_an_exchange_the_filesystem_cannot_do_falls_back_and_other_errors_keep_the_old_folder(
        tmp_path, monkeypatch, code) -> None:
    target = tmp_path / "adapter"
    replace_folder_atomically(target, lambda tmp: write(tmp, {"a.txt": "old"}))
    monkeypatch.setattr(fileio, "_renameat2", lambda: lambda old, new, flags: code)
    if code == errno.EIO:
        with pytest.raises(OSError, match="Input/output error"):
            replace_folder_atomically(target, lambda tmp: write(tmp, {"a.txt": "new"}))
    else:
        replace_folder_atomically(target, lambda tmp: write(tmp, {"a.txt": "new"}))
    assert (target / "a.txt").read_text() == ("old" if code == errno.EIO else "new")
    assert hidden(tmp_path) == []


def test_an_ambiguous_set_aside_folder_is_not_restored_and_bad_targets_are_refused(tmp_path, monkeypatch) -> None:
    for name in (".adapter.old-00000000", ".adapter.old-11111111"):
        (tmp_path / name).mkdir()
    assert restore_interrupted_replace(tmp_path / "adapter") is False
    assert not (tmp_path / "adapter").exists() and len(hidden(tmp_path)) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, expected a folder"):
        replace_folder_atomically(tmp_path / "file", lambda tmp: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="holds the working directory"):
        replace_folder_atomically(".", lambda tmp: None)

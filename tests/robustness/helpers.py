"""Helpers for the robustness tests: safetensors surgery, resource guards, run-folder checks, and
`ForkServer`: one Python process that imports the toolkit once, then forks a fresh CLI process
per request, so the SIGKILL and bad-input tests can afford many short-lived commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- safetensors surgery
def split_safetensors(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """(header as a dict, raw data) of a valid safetensors payload."""
    (length,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + length]), payload[8 + length :]


def join_safetensors(header: dict[str, Any], data: bytes, length: int | None = None) -> bytes:
    """A safetensors payload from a header dict and raw data; `length` overrides the declared header size."""
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


# ----------------------------------------------------------------------------- guards
class CaseTimeout(Exception):
    """A fuzz case ran past its watchdog (a hang)."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the main thread if the block runs longer than `seconds` (SIGALRM)."""
    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def address_space_headroom(extra_bytes: int) -> Iterator[None]:
    """Cap this process's address space at its current size + `extra_bytes` (Linux), so that any
    attempt to allocate more fails at once instead of swapping or being OOM-killed."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except OSError:  # not Linux: no cap, the timing and type checks still run
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = pages * os.sysconf("SC_PAGE_SIZE") + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------- run folders
def check_run_files(run_dir: Path) -> list[str]:
    """Parse every output file of a (possibly killed) run; return the hidden temp files left behind.

    Raises AssertionError naming the first file that does not parse. train.log is append-only
    text (a kill may cut its last line) and is not checked; hidden `.<name>.*.tmp` files are
    never read by the toolkit and are returned instead of checked.
    """
    leftovers = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        name = path.name
        if name.startswith(".") and ".tmp" in name:
            leftovers.append(str(path.relative_to(run_dir)))
            continue
        assert not name.endswith(".tmp"), f"visible temporary file {path}"
        try:
            if name.endswith(".json"):
                json.loads(path.read_text(encoding="utf-8"))
            elif name.endswith(".jsonl"):
                [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            elif name.endswith(".safetensors"):
                load_file(path)
            elif name.endswith(".png"):
                data = path.read_bytes()
                assert data.startswith(PNG_MAGIC) and data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82"), "cut PNG"
            elif name.endswith(".pt"):
                torch.load(path, map_location="cpu", weights_only=True)
            elif name.endswith(".md"):
                assert path.read_text(encoding="utf-8").count("```") % 2 == 0, "cut model card"
        except Exception as error:  # any parse failure is the finding: report which file
            raise AssertionError(f"{path} is half-written or corrupt: {type(error).__name__}: {error}") from error
    return leftovers


# ----------------------------------------------------------------------------- CLI processes
SERVER_CODE = r"""
import json, os, signal, sys, traceback
# Import what the commands need once; each forked child then starts in milliseconds.
import roberta_lora.cli.main, roberta_lora.cli.train, roberta_lora.training.loop, roberta_lora.training.train_all
import roberta_lora.evaluation.evaluate, roberta_lora.evaluation.predict, roberta_lora.evaluation.scoring
import roberta_lora.adapters.merge, roberta_lora.adapters.peft, roberta_lora.data.readers, roberta_lora.model.wrapper
import datasets, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot

def redirect(request):
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    if request["stderr"] is None:  # one log for both streams, appended to (a resumed run adds to its log)
        log = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
    else:
        os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)

def kill_when_committing(kill_at):
    # A commit is an os.replace of a file or a new folder, or the renameat2 exchange that swaps a
    # whole adapter folder in (roberta_lora.fileio): count both, by their destination path.
    import roberta_lora.fileio as fileio
    seen = [0]
    def commit(dst, do):
        if str(dst) == kill_at["path"]:
            seen[0] += 1
            if seen[0] == kill_at["occurrence"]:
                print(f"SELF-KILL {kill_at['when']} committing {dst}", flush=True)
                if kill_at["when"] == "after":
                    do()
                os.kill(os.getpid(), signal.SIGKILL)
        return do()
    real_replace, real_factory = os.replace, fileio._renameat2
    os.replace = lambda src, dst, *a, **k: commit(dst, lambda: real_replace(src, dst, *a, **k))
    def factory():
        call = real_factory()
        return None if call is None else (
            lambda old, new, flags: commit(os.fsdecode(new), lambda: call(old, new, flags)))
    fileio._renameat2 = factory

def child(request):
    code = 70
    try:
        if request["cwd"]:
            os.chdir(request["cwd"])
        os.environ.update(request["env"])
        redirect(request)
        if request["kill_at"]:
            kill_when_committing(request["kill_at"])
        if request["timeout"]:
            signal.alarm(request["timeout"])  # a hang ends the child (exit -14) instead of the test run
        code = roberta_lora.cli.main.main(request["argv"])
        code = code if isinstance(code, int) else 0
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "start":
        pid = os.fork()
        if pid == 0:
            child(request)
        print(json.dumps({"pid": pid}), flush=True)
    elif request["op"] == "wait":
        _, status = os.waitpid(request["pid"], 0)
        print(json.dumps({"pid": request["pid"], "exit": os.waitstatus_to_exitcode(status)}), flush=True)
    elif request["op"] == "wait_any":
        pid, status = os.wait()
        print(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ForkServer:
    """One process that has imported the toolkit and forks a CLI process per `start()`.

    A forked child runs `roberta_lora.cli.main(argv)` (the `roberta-lora` command line), in `cwd` with
    `env` added, its output in files. `kill_at=(path, k, "before" | "after")` makes it SIGKILL itself
    when it commits `path` (an atomic write's os.replace, or the exchange that swaps an adapter folder
    in) for the k-th time, just before or just after the rename: a kill at an exact point between two
    file writes. `timeout` seconds end a hung child with SIGALRM.
    """

    def __init__(self, env: dict[str, str], cwd: Path | None = None, preload: tuple[str, ...] = ()) -> None:
        """`preload`: more modules to import once in the server (e.g. what a sweep worker needs)."""
        code = "".join(f"import {module}\n" for module in preload) + SERVER_CODE
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=env, cwd=str(cwd or Path(__file__).resolve().parents[2]),
        )
        assert self._read() == "ready"

    def _read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server exited with {self.process.wait()}")
        return line.strip()

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self._read())

    def start(self, argv: list[str], log: Path, *, split_streams: bool = False, cwd: Path | None = None,
              env: dict[str, str] | None = None, timeout: int | None = None,
              kill_at: tuple[Path, int, str] | None = None) -> int:
        """Fork a child; its stdout and stderr are appended to `log`, or with `split_streams` written
        to `<log>.stdout` and `<log>.stderr`. Returns the child's pid."""
        path, occurrence, when = kill_at if kill_at is not None else (None, 0, "")
        return self._send({
            "op": "start", "argv": argv, "cwd": str(cwd) if cwd else None, "env": env or {}, "timeout": timeout,
            "stdout": f"{log}.stdout" if split_streams else str(log), "stderr": f"{log}.stderr" if split_streams else None,
            "kill_at": {"path": str(path), "occurrence": occurrence, "when": when} if kill_at is not None else None,
        })["pid"]

    def wait(self, pid: int) -> int:
        """The child's exit code (negative: killed by that signal)."""
        return self._send({"op": "wait", "pid": pid})["exit"]

    def wait_any(self) -> tuple[int, int]:
        """(pid, exit code) of the next child to end (negative: killed by that signal)."""
        answer = self._send({"op": "wait_any"})
        return answer["pid"], answer["exit"]

    def close(self) -> None:
        """Stop the server (every child has been waited for; a clean interpreter exit would take seconds)."""
        self.process.terminate()
        self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.stdout is not None:
            self.process.stdout.close()


def wait_for(condition: Any, timeout: float, interval: float = 0.005) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False

"""Bad inputs and faults a real user makes, run through the real `roberta-lora` command line.

Every row of `bad_input_cases.CASES` runs `roberta_lora.cli.main.main(argv)` in a process forked
from one server that imported the toolkit once (so a case costs milliseconds, not an interpreter
start), in its own workspace holding fresh copies of the fixtures it names. Each case must:

* exit non-zero;
* print no "Traceback" on stderr;
* keep stderr under 2 KB (what the user reads, logging included);
* name on stderr the offending file, flag or value (one of the case's `expect` substrings);
* leave every file that existed before byte-identical, and create new files only where the command
  legitimately writes (the case's `may_write`: the cache, a fresh run folder for `train`).

Cases run up front in parallel (module fixture `outcomes`); each test item reports its own case.
`pytest -s` prints the counts per category and the failures grouped by reason at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .bad_input_cases import CASES, CATEGORIES, Case, SkipCase, Workspace
from .helpers import ForkServer
from fixtures_glue import squad_document, write_glue_fixture

MAX_STDERR = 2048
CASE_TIMEOUT_S = 40  # SIGALRM in the child: a hang is reported as such, not waited for
PARALLEL = max(2, min(4, (os.cpu_count() or 2) + 1))

def run_many(server: ForkServer, jobs: list[dict[str, Any]], parallel: int) -> dict[int, int]:
    """Run jobs ({key, argv, cwd, log, env}) with at most `parallel` children at once; key -> exit code."""
    pending, running, codes = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            pid = server.start(job["argv"], job["log"], split_streams=True, cwd=job["cwd"], env=job["env"],
                               timeout=CASE_TIMEOUT_S, kill_at=job.get("kill_at"))
            running[pid] = (job["key"], time.perf_counter())
        pid, code = server.wait_any()
        key, started = running.pop(pid)
        codes[key] = code
        DURATIONS[key] = time.perf_counter() - started
    return codes


DURATIONS: dict[str, float] = {}  # job key -> wall seconds


# ----------------------------------------------------------------------------- file snapshots
def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """relative path -> ("dir",) | ("link", target) | ("file", sha256) | ("unreadable", size), not following links."""
    entries: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        rel_folder = os.path.relpath(folder, root)
        for name in dirs + files:
            rel = os.path.normpath(os.path.join(rel_folder, name))
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[rel] = ("dir",)
            else:
                try:
                    with open(path, "rb") as handle:
                        entries[rel] = ("file", hashlib.sha256(handle.read()).hexdigest())
                except OSError:
                    entries[rel] = ("unreadable", info.st_size)
    return entries


def file_changes(before: dict[str, tuple], after: dict[str, tuple], may_write: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(problems, allowed new files): changed / deleted old paths and new files outside `may_write`."""
    problems, allowed = [], []
    for rel, entry in before.items():
        if rel not in after:
            problems.append(f"deleted {rel}")
        elif after[rel] != entry:
            problems.append(f"changed {rel}")
    for rel, entry in after.items():
        if rel in before or entry == ("dir",):  # a new empty folder is not counted; its files are
            continue
        if any(rel == p or rel.startswith(p + "/") for p in may_write):
            allowed.append(rel)
        else:
            problems.append(f"new {rel}")
    return problems, allowed


def unlock(root: Path) -> None:
    """Give the owner back every permission (cases chmod files and folders) so they can be read and removed."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.lstat(path).st_mode | stat.S_IRWXU)


# ----------------------------------------------------------------------------- module fixtures
@dataclass
class Outcome:
    case: Case
    skipped: str | None = None
    exit_code: int | None = None
    stderr: str = ""
    argv: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # reason -> detail
    allowed_new: list[str] = field(default_factory=list)


def child_env(root: Path) -> dict[str, str]:
    """Per-command environment: the tokenization cache and HOME inside pytest's tmp folders."""
    (root / "home").mkdir(exist_ok=True)
    return {"ROBERTA_LORA_CACHE": str(root / "cache"), "HOME": str(root / "home")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs-env")
    (root / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}  # what a user sees
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "HOME": str(root / "home"), "HF_HOME": str(root / "home" / "hf"),
                "MPLCONFIGDIR": str(root / "home" / "mpl"), "XDG_CACHE_HOME": str(root / "home" / "xdg"),
                "TMPDIR": str(root / "home"), "ROBERTA_LORA_CACHE": str(root / "cache")})
    env.pop("ROBERTA_LORA_TASKS_DIR", None)
    fork_server = ForkServer(env, cwd=root)
    yield fork_server
    fork_server.close()


@dataclass
class Fixtures:
    root: Path
    templates: dict[str, Path]
    seconds: float
    template_snapshot: dict[str, dict[str, tuple]]
    resume_control_exit: int | None = None


@pytest.fixture(scope="module")
def fixtures(server, tiny_model_dir, tmp_path_factory) -> Fixtures:
    """Model folders, data, finished / interrupted runs, adapters and a PEFT export, built once."""
    started = time.perf_counter()
    from roberta_lora.model.toy import DEFAULT_CORPUS, make_toy_roberta

    root = tmp_path_factory.mktemp("bad-inputs-fixtures")
    other = make_toy_roberta(root / "other_base", corpus=DEFAULT_CORPUS, seed=1)
    glue = root / "glue"
    for task in ("sst2", "rte", "mrpc", "stsb", "cola", "mnli"):
        write_glue_fixture(glue, task, n_train=24, n_dev=12)
    squad = root / "squad"
    (squad / "squad").mkdir(parents=True)
    for version, suffix in ((1, "v1.1"), (2, "v2.0")):
        for split in ("train", "dev"):
            (squad / "squad" / f"{split}-{suffix}.json").write_text(json.dumps(squad_document(version, split=split)))
    cache, logs = root / "cache", root / "logs"
    logs.mkdir()

    def train_argv(out: Path, *flags: str, task: str = "sst2", data: Path = glue) -> list[str]:
        return ["train", "--task", task, "--model", str(tiny_model_dir), "--data-dir", str(data), "--output-dir",
                str(out), "--cache-dir", str(cache), "--no-progress", "--batch-size", "8", *flags]

    env = child_env(root)
    jobs = [
        {"key": "run_sst2", "argv": train_argv(root / "run_sst2", "--max-steps", "2", "--head", "light")},
        {"key": "run_sst2_roberta", "argv": train_argv(root / "run_sst2_roberta", "--max-steps", "2", "--head", "roberta")},
        {"key": "run_squad", "argv": train_argv(root / "run_squad", "--max-steps", "2", task="squad_v1", data=squad)},
        # The interrupted run: 2 epochs, SIGKILLed right after epoch 1's checkpoint is committed.
        {"key": "run_unfinished", "argv": train_argv(root / "run_unfinished", "--epochs", "2"),
         "kill_at": (root / "run_unfinished" / "checkpoint" / "training_state.pt", 1, "after")},
    ]
    for job in jobs:
        job.update(cwd=root, log=logs / job["key"], env=env)
    codes = run_many(server, jobs, parallel=4)
    unfinished = root / "run_unfinished"
    assert codes.pop("run_unfinished") == -9, "the interrupted run was not killed"
    for key, code in codes.items():
        assert code == 0, f"fixture {key} failed:\n" + (logs / f"{key}.stderr").read_text()[-3000:]
    assert (unfinished / "checkpoint" / "training_state.pt").is_file() and not (unfinished / "adapter").exists()

    peft = root / "peft_sst2"
    code = server.wait(server.start(["export-peft", "--adapter", str(root / "run_sst2_roberta" / "adapter"),
                                     "--output", str(peft)], logs / "export", split_streams=True, cwd=root, env=env,
                                    timeout=CASE_TIMEOUT_S))
    assert code == 0, (logs / "export.stderr").read_text()[-3000:]
    templates = {
        "model": Path(tiny_model_dir), "other_model": other, "glue": glue, "squad": squad,
        "run_sst2": root / "run_sst2", "run_unfinished": unfinished, "peft_sst2": peft,
        "adapter_sst2": root / "run_sst2" / "adapter", "adapter_sst2_roberta": root / "run_sst2_roberta" / "adapter",
        "adapter_squad": root / "run_squad" / "adapter",
    }
    shots = {name: snapshot(path) for name, path in templates.items()}
    return Fixtures(root, templates, time.perf_counter() - started, shots)


def selected_cases(session: pytest.Session) -> list[Case]:
    """The cases whose test items were collected and selected (so `-k` runs only those)."""
    by_id = {case_id(c): c for c in CASES}
    wanted = [item.callspec.id for item in session.items
              if item.originalname == "test_bad_input" and item.module.__name__ == __name__]
    return [by_id[i] for i in wanted if i in by_id]


def case_id(c: Case) -> str:
    return f"{c.category}:{c.id}"


SUMMARY: dict[str, Any] = {}


@pytest.fixture(scope="module")
def outcomes(request, server, fixtures) -> dict[str, Outcome]:
    """Run every selected case (in parallel), check it, and print the summary when the module ends."""
    started = time.perf_counter()
    cases = selected_cases(request.session)
    root = fixtures.root.parent / "bad-inputs-cases"
    root.mkdir(exist_ok=True)
    results: dict[str, Outcome] = {}
    prepared: dict[str, dict[str, Any]] = {}
    jobs = []
    for number, c in enumerate(cases):
        folder = root / f"{number:03d}"
        ws_root = folder / "ws"
        ws_root.mkdir(parents=True)
        (folder / "home").mkdir()
        ws = Workspace(ws_root, fixtures.templates)
        outcome = results[case_id(c)] = Outcome(c)
        try:
            if c.setup:
                c.setup(ws)
            argv = [ws.format(a) for a in c.argv]
            expect = [ws.format(e) for e in c.expect]
        except SkipCase as reason:
            outcome.skipped = str(reason)
            continue
        (ws_root / c.cwd).mkdir(parents=True, exist_ok=True)
        outcome.argv = argv
        before = snapshot(ws_root, skip=("cache",))
        prepared[case_id(c)] = {"ws": ws_root, "before": before, "expect": expect, "folder": folder}
        env = {"ROBERTA_LORA_CACHE": str(ws_root / "cache"), "HOME": str(folder / "home")}
        jobs.append({"key": case_id(c), "argv": argv, "cwd": ws_root / c.cwd, "log": folder / "log", "env": env})

    # A control for the resume cases: the interrupted run, resumed with its own settings, must finish.
    control = root / "resume-control"
    shutil.copytree(fixtures.templates["run_unfinished"], control)
    jobs.append({"key": "resume-control", "cwd": root, "log": root / "resume-control-log", "env": child_env(root),
                 "argv": ["train", "--task", "sst2", "--model", str(fixtures.templates["model"]), "--data-dir",
                          str(fixtures.templates["glue"]), "--epochs", "2", "--batch-size", "8", "--no-progress",
                          "--cache-dir", str(root / "cache"), "--resume", "--output-dir", str(control)]})
    codes = run_many(server, jobs, PARALLEL)
    fixtures.resume_control_exit = codes.pop("resume-control")

    for key, code in codes.items():
        info, outcome = prepared[key], results[key]
        unlock(info["ws"])
        outcome.exit_code = code
        stderr_bytes = Path(f"{info['folder'] / 'log'}.stderr").read_bytes()
        outcome.stderr = stderr_bytes.decode("utf-8", "replace")
        problems = outcome.problems
        if code == -14:
            problems["timeout"] = f"still running after {CASE_TIMEOUT_S} s (SIGALRM)"
        elif code == 0:
            problems["zero exit"] = "exit code 0"
        elif code < 0:
            problems["killed"] = f"killed by signal {-code}"
        if "Traceback" in outcome.stderr:
            problems["traceback"] = "Traceback on stderr"
        if len(stderr_bytes) >= MAX_STDERR:
            problems["too long"] = f"stderr is {len(stderr_bytes)} bytes (limit {MAX_STDERR})"
        if not any(e in outcome.stderr for e in info["expect"]):
            problems["missing name"] = f"stderr names none of {info['expect']}"
        changes, outcome.allowed_new = file_changes(info["before"], snapshot(info["ws"], skip=("cache",)),
                                                    outcome.case.may_write)
        if changes:
            shown = changes[:6] + ([f"... {len(changes) - 6} more"] if len(changes) > 6 else [])
            problems["changed files"] = "; ".join(shown)
    SUMMARY["case_seconds"] = time.perf_counter() - started
    SUMMARY["fixture_seconds"] = fixtures.seconds
    yield results
    print_summary(results, fixtures)
    if os.environ.get("BAD_INPUTS_REPORT"):  # a machine-readable copy of the outcomes, for triage
        Path(os.environ["BAD_INPUTS_REPORT"]).write_text(json.dumps([
            {"id": key, "skipped": o.skipped, "exit": o.exit_code, "problems": o.problems, "argv": o.argv,
             "stderr": o.stderr[-4000:], "stderr_bytes": len(o.stderr.encode()), "allowed_new": o.allowed_new}
            for key, o in results.items()], indent=1))


def print_summary(results: dict[str, Outcome], fixtures: Fixtures) -> None:
    ran = [o for o in results.values() if o.skipped is None]
    per_category: dict[str, Counter] = defaultdict(Counter)
    for o in results.values():
        per_category[o.case.category]["skipped" if o.skipped else ("passed" if not o.problems else "failed")] += 1
    print(f"\n\n=== bad inputs: {len(results)} cases, {sum(not o.problems for o in ran)} passed, "
          f"{sum(bool(o.problems) for o in ran)} failed, {len(results) - len(ran)} skipped; fixtures "
          f"{SUMMARY.get('fixture_seconds', 0):.1f} s, cases {SUMMARY.get('case_seconds', 0):.1f} s "
          f"({PARALLEL} at a time)")
    print(f"{'category':<16} {'cases':>5} {'passed':>6} {'failed':>6} {'skipped':>7}")
    for category in CATEGORIES:
        counts = per_category.get(category)
        if counts:
            print(f"{category:<16} {sum(counts.values()):>5} {counts['passed']:>6} {counts['failed']:>6} "
                  f"{counts['skipped']:>7}")
    by_reason: dict[str, list[Outcome]] = defaultdict(list)
    for o in ran:
        for reason in o.problems:
            by_reason[reason].append(o)
    for reason in ("timeout", "killed", "traceback", "zero exit", "changed files", "missing name", "too long"):
        if by_reason.get(reason):
            print(f"\n--- {reason}: {len(by_reason[reason])}")
            for o in by_reason[reason]:
                print(f"  {case_id(o.case)}  [{o.exit_code}]  {last_line(o.stderr)[:160]}")
    leftovers = [o for o in ran if o.allowed_new and any(not p.startswith("cache") for p in o.allowed_new)]
    if leftovers:
        print(f"\n--- left files in their fresh run folder (allowed): {len(leftovers)}")
        for o in leftovers:
            print(f"  {case_id(o.case)}: {sorted(p for p in o.allowed_new if not p.startswith('cache'))[:5]}")
    slowest = sorted(((DURATIONS.get(case_id(o.case), 0.0), case_id(o.case)) for o in ran), reverse=True)[:8]
    print("\nslowest cases: " + ", ".join(f"{key} {seconds:.1f} s" for seconds, key in slowest))
    print(f"\nresume control (interrupted run resumed with its own settings): exit {fixtures.resume_control_exit}")
    changed = [name for name, shot in fixtures.template_snapshot.items() if snapshot(fixtures.templates[name]) != shot]
    print(f"module fixtures changed by the cases: {changed or 'none'}")


def last_line(text: str) -> str:
    """The most telling line of stderr: the exception line of a traceback, else the last non-empty line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "(stderr empty)"
    for line in reversed(lines):
        if "error" in line.lower() and not line.startswith(" "):
            return line.strip()
    return lines[-1].strip()


def describe(outcome: Outcome) -> str:
    checks = "\n".join(f"  - {reason}: {detail}" for reason, detail in outcome.problems.items())
    tail = outcome.stderr[-1500:] if outcome.stderr else "(empty)"
    return (f"{case_id(outcome.case)} failed these checks:\n{checks}\n"
            f"command: roberta-lora {' '.join(repr(a) if ' ' in a or not a else a for a in outcome.argv)}\n"
            f"exit code: {outcome.exit_code}\nstderr (tail):\n{tail}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bad_input(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case_id(case)]
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert not outcome.problems, describe(outcome)


def test_case_table_is_large_enough() -> None:
    assert len(CASES) >= 150, len(CASES)
    assert len({case_id(c) for c in CASES}) == len(CASES)


def test_fixtures_untouched_and_resume_works(outcomes: dict[str, Outcome], fixtures: Fixtures) -> None:
    """The shared originals (read by `{tpl_*}` cases) are unchanged, and a correct resume succeeds."""
    changed = [name for name, shot in fixtures.template_snapshot.items()
               if snapshot(fixtures.templates[name]) != shot]
    assert not changed, f"cases changed the module fixtures {changed}"
    assert fixtures.resume_control_exit == 0, "resuming the interrupted run with its own settings failed"

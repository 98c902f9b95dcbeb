"""`sweep --storage URL`: several sweep processes share one Optuna study. Each trial and seed runs once, a
killed worker's trial is retried in its own folder, the table equals the one a single process writes, on
sqlite, a journal file and (where their servers are installed) real PostgreSQL and MariaDB (MySQL)
servers; and the new flags' mistakes are one line each."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from robustness.helpers import ForkServer

from roberta_lora.cli.main import main

from fixtures_glue import write_glue_fixture

optuna = pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    write_glue_fixture(root, "rte", n_train=16, n_dev=8)
    return root


def argv(model: Path, data: Path, root: Path, cache: Path, *extra: str, grid=("lr=1e-3,2e-3", "rank=2,4"),
         seeds: str = "0,1") -> list[str]:
    grids = [x for g in grid for x in ("--grid", g)]
    return ["sweep", "--task", "rte", *grids, "--seeds", seeds, "--model", str(model), "--data-dir", str(data),
            "--output-dir", str(root), "--epochs", "1", "--batch-size", "8", "--no-progress", "--cache-dir",
            str(cache), *extra]


@pytest.fixture(scope="module")
def workers():
    """A fork server that imported the toolkit, optuna and SQLAlchemy once: each worker process it forks
    starts at once instead of spending ~6 s of CPU on imports (16 workers in this file)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = ForkServer(env, preload=("optuna", "sqlalchemy", "roberta_lora.training.sweep",
                                      "roberta_lora.training.shared_sweep", "roberta_lora.cli.sweep"))
    yield server
    server.close()


def worker(server: ForkServer, args: list[str], log: Path) -> int:
    """A `roberta-lora sweep` process (a forked child of `server`, ended by SIGALRM after 240 s); its pid."""
    return server.start(args, log, timeout=240)


def finish(server: ForkServer, pids: list[int], logs: list[Path]) -> None:
    for pid, log in zip(pids, logs, strict=True):
        assert server.wait(pid) == 0, log.read_text()[-3000:]


def two_workers(server: ForkServer, model: Path, data: Path, tmp_path: Path, url: str,
                grid=("lr=1e-3,2e-3", "rank=2,4")) -> tuple[Path, list[Path]]:
    """Two concurrent workers on a grid (4 combinations unless told) sharing `url`; returns the sweep folder and
    their logs."""
    root = tmp_path / "sweep"
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    args = argv(model, data, root, tmp_path / "cache", "--storage", url, grid=grid)
    finish(server, [worker(server, args, log) for log in logs], logs)
    return root, logs


def study_of(url: str):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    else:
        storage = url
    return optuna.load_study(study_name="sweep", storage=storage)


def worked_slots(study) -> list[int]:
    """Slots of the trials that completed (or were pruned); the surplus trials a race hands out are not work."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sorted(t.user_attrs["slot"] for t in study.trials if t.state in done)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, glue_dir, tmp_path_factory) -> dict[str, str]:
    """The single-process sweeps the shared ones must equal: 4 and 2 grid combinations, 2 seeds."""
    out = {}
    for name, grid in (("four", ("lr=1e-3,2e-3", "rank=2,4")), ("two", ("lr=1e-3,2e-3",))):
        root = tmp_path_factory.mktemp(f"ref-{name}")
        assert main(argv(tiny_model_dir, glue_dir, root / "sweep", root / "cache", grid=grid)) == 0
        out[name] = (root / "sweep" / "sweep.csv").read_text()
    return out


def url_for(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_a_grid_and_write_the_single_process_table(kind, workers, tiny_model_dir, glue_dir,
                                                                     reference, tmp_path) -> None:
    url = url_for(kind, tmp_path)
    root, logs = two_workers(workers, tiny_model_dir, glue_dir, tmp_path, url)
    study = study_of(url)
    assert worked_slots(study) == [0, 1, 2, 3]  # every combination once, none twice
    fails = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert not fails
    assert (root / "sweep.csv").read_text() == reference["four"]
    # each seed of each trial is one run folder, trained once: one metrics line per epoch
    for slot in range(4):
        for seed in (0, 1):
            lines = (root / f"trial-{slot:03d}" / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()
            assert len(lines) == 1, (slot, seed, lines)
    # both workers printed the full table
    for log in logs:
        assert "(4 trials)" in log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_killed_workers_trial_is_retried_in_its_folder(kind, workers, tiny_model_dir, glue_dir, reference,
                                                         tmp_path) -> None:
    kill_one_worker_and_finish(workers, url_for(kind, tmp_path), tiny_model_dir, glue_dir, reference, tmp_path)


def kill_one_worker_and_finish(server: ForkServer, url: str, tiny_model_dir: Path, glue_dir: Path,
                               reference: dict[str, str], tmp_path: Path) -> None:
    """A worker killed (SIGKILL) while training its first trial; a second worker retries it in its folder."""
    root = tmp_path / "sweep"
    args = argv(tiny_model_dir, glue_dir, root, tmp_path / "cache", "--storage", url, "--heartbeat", "1",
                grid=("lr=1e-3,2e-3",))
    first = worker(server, args, tmp_path / "first.log")
    deadline = time.monotonic() + 120
    while not (root / "trial-000" / "seed-0" / "config.json").exists():  # the first trial's training began
        assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-2000:]
        time.sleep(0.05)
    os.kill(first, signal.SIGKILL)
    assert server.wait(first) == -signal.SIGKILL  # killed while training, not finished before the kill
    second = worker(server, args, tmp_path / "second.log")
    finish(server, [second], [tmp_path / "second.log"])
    study = study_of(url)
    assert worked_slots(study) == [0, 1]
    lost = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("slot") == 0]
    assert len(lost) == 1  # the killed worker's trial, failed once and run again
    assert (root / "sweep.csv").read_text() == reference["two"]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("trial-")) == ["trial-000", "trial-001"]


@pytest.mark.slow
def test_optuna_trials_are_counted_across_workers(workers, tiny_model_dir, glue_dir, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    args = argv(tiny_model_dir, glue_dir, tmp_path / "sweep", tmp_path / "cache", "--storage", url, "--optuna", "3",
                seeds="0")
    finish(workers, [worker(workers, args, log) for log in logs], logs)
    assert worked_slots(study_of(url)) == [0, 1, 2]  # 3 in all, not 3 per worker


def test_a_shared_optuna_slot_that_draws_trained_settings_reuses_their_result(tiny_model_dir, glue_dir,
                                                                             tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    root = tmp_path / "sweep"
    assert main(argv(tiny_model_dir, glue_dir, root, tmp_path / "cache", "--storage", url, "--optuna", "2",
                     grid=("lr=1e-3",), seeds="0")) == 0
    study = study_of(url)
    done = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                  key=lambda t: t.user_attrs["slot"])
    assert [t.user_attrs["slot"] for t in done] == [0, 1]
    assert done[1].user_attrs["repeat_of"] == done[0].number and done[1].value == done[0].value
    assert sorted(p.name for p in root.glob("trial-*")) == ["trial-000"]  # slot 1 trained nothing
    assert len((root / "sweep.csv").read_text().splitlines()) == 2  # one row per trained setting


# ---- PostgreSQL, where Debian's server is installed ------------------------------------------------------

def postgres_bin() -> Path | None:
    for version in ("17", "16", "15", "14", "13"):
        folder = Path(f"/usr/lib/postgresql/{version}/bin")
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


@pytest.fixture()
def postgres_url():
    folder = postgres_bin()
    if folder is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql); the sqlite and journal "
                    "cases cover the same code")
    pytest.importorskip("psycopg", reason="psycopg[binary] (the dev extra) is SQLAlchemy's PostgreSQL driver")
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data = Path(tempfile.mkdtemp(prefix="roberta-lora-pg-"))
    if as_postgres:
        shutil.chown(data, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    init = subprocess.run([*as_postgres, str(folder / "initdb"), "-D", str(data / "db"), "--auth=trust", "-U",
                           "postgres"], capture_output=True, text=True)
    if init.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    start = subprocess.run([*as_postgres, str(folder / "pg_ctl"), "-D", str(data / "db"), "-w", "-l",
                            str(data / "log"), "-o", f"-p {port} -k {data} -h 127.0.0.1", "start"],
                           capture_output=True, text=True)
    if start.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(folder / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


# ---- MySQL (MariaDB), where Debian's server is installed ------------------------------------------------

@pytest.fixture()
def mysql_url():
    install, server = shutil.which("mariadb-install-db"), shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").is_file() else None)
    if install is None or server is None:
        pytest.skip("no MariaDB server binaries (Debian: apt-get install mariadb-server); the sqlite and journal "
                    "cases cover the same code")
    pymysql = pytest.importorskip("pymysql", reason="pymysql (the dev extra) is SQLAlchemy's MySQL driver here")
    data = Path(tempfile.mkdtemp(prefix="roberta-lora-mysql-"))
    user = ["--user=root"] if os.geteuid() == 0 else []
    init = subprocess.run([install, "--no-defaults", f"--datadir={data / 'db'}", "--skip-test-db",
                           "--auth-root-authentication-method=normal", *user], capture_output=True, text=True)
    if init.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"mariadb-install-db failed: {init.stderr.strip()[-300:]}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (data / "server.log").open("w")
    proc = subprocess.Popen([server, "--no-defaults", f"--datadir={data / 'db'}", f"--socket={data / 'sock'}",
                             f"--port={port}", "--bind-address=127.0.0.1", "--skip-grant-tables", "--skip-log-bin",
                             "--innodb-buffer-pool-size=32M", *user], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = pymysql.connect(host="127.0.0.1", port=port, user="root")
                break
            except pymysql.err.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"MariaDB did not start: {(data / 'server.log').read_text()[-300:]}")
                time.sleep(0.2)
        with connection, connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE optuna")
        yield f"mysql+pymysql://root@127.0.0.1:{port}/optuna"
    finally:
        proc.kill()
        proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("server_url", ["postgres_url", "mysql_url"])
def test_two_workers_share_a_grid_on_a_database_server(server_url, request, workers, tiny_model_dir, glue_dir,
                                                        reference, tmp_path) -> None:
    url = request.getfixturevalue(server_url)  # skips where that server is not installed
    root, _ = two_workers(workers, tiny_model_dir, glue_dir, tmp_path, url, grid=("lr=1e-3,2e-3",))
    assert worked_slots(study_of(url)) == [0, 1]  # the dialect's own test; sqlite and journal run the 4-grid
    assert (root / "sweep.csv").read_text() == reference["two"]


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_on_mysql(mysql_url, workers, tiny_model_dir, glue_dir, reference,
                                                    tmp_path) -> None:
    kill_one_worker_and_finish(workers, mysql_url, tiny_model_dir, glue_dir, reference, tmp_path)


# ---- workers creating the schema together -----------------------------------------------------------------

@pytest.mark.parametrize(("message", "retried"), [
    ("(sqlite3.OperationalError) table studies already exists", True),
    ("(sqlite3.IntegrityError) UNIQUE constraint failed: version_info.version_info_id", True),
    ('(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "version_info_pkey"', True),
    ("(pymysql.err.IntegrityError) (1062, \"Duplicate entry '1' for key 'PRIMARY'\")", True),
    ("(pymysql.err.OperationalError) (1050, \"Table 'studies' already exists\")", True),
    ("(pymysql.err.OperationalError) (1045, \"Access denied for user 'root'\")", False),
    ("(psycopg.OperationalError) connection refused", False),
])
def test_a_schema_race_is_retried_and_nothing_else(message, retried, monkeypatch) -> None:
    from roberta_lora.training import shared_sweep

    calls = []

    def storage(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError(message)
        return "storage"

    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    monkeypatch.setattr(shared_sweep.time, "sleep", lambda seconds: None)
    if retried:
        assert shared_sweep._open_rdb(optuna, "mysql+pymysql://h/db", "mysql", 5) == "storage" and len(calls) == 2
    else:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            shared_sweep._open_rdb(optuna, "mysql+pymysql://h/db", "mysql", 5)
        assert len(calls) == 1


# ---- the flags' mistakes: one line each, nothing written ---------------------------------------------------

SECRET = "hunter2-very-secret"
BAD = [
    (["--storage", ""], "--storage is empty"),
    (["--storage", "   "], "--storage is empty"),
    (["--storage", "redis://localhost/0"], "expected sqlite:///PATH, journal:PATH"),
    (["--storage", "study.db"], "expected sqlite:///PATH, journal:PATH"),
    (["--storage", "sqlite://"], "three slashes"),
    (["--storage", "journal:"], "expected journal:PATH"),
    (["--storage", "journal:/no/such/folder/study.log"], "does not exist; create it first"),
    (["--storage", "sqlite:////no/such/folder/study.db"], "does not exist; create it first"),
    (["--storage", f"postgresql://alice:{SECRET}@127.0.0.1:1/db"], "cannot open the study storage"),
    (["--storage", f"mysql+nosuchdriver://alice:{SECRET}@127.0.0.1:1/db"], "--storage mysql+nosuchdriver://alice:***@"),
    (["--storage", "sqlite:///{tmp}/s.db", "--heartbeat", "0"], "--heartbeat 0"),
    (["--storage", "sqlite:///{tmp}/s.db", "--heartbeat", "-5"], "--heartbeat -5"),
    (["--storage", "sqlite:///{tmp}/s.db", "--heartbeat", "nan"], "--heartbeat nan"),
    (["--storage", "sqlite:///{tmp}/s.db", "--heartbeat", "inf"], "--heartbeat inf"),
    (["--storage", "sqlite:///{tmp}/s.db", "--heartbeat", "1.5"], "--heartbeat 1.5"),
    (["--storage", "sqlite:///{tmp}/s.db", "--heartbeat", "99999"], "--heartbeat 99999"),
    (["--storage", "sqlite:///{tmp}/s.db", "--heartbeat", "abc"], "invalid float value"),
    (["--storage", "sqlite:///{tmp}/s.db", "--study-name", ""], "--study-name"),
    (["--storage", "sqlite:///{tmp}/s.db", "--study-name", "x" * 300], "--study-name"),
    (["--storage", "sqlite:///{tmp}/s.db", "--study-name", "a\x00b"], "--study-name"),
    (["--storage", "sqlite:///{tmp}"], "is a folder"),
    (["--storage", "journal:{tmp}"], "is a folder"),
    (["--heartbeat", "5"], "only apply with --storage"),
    (["--study-name", "other"], "only apply with --storage"),
    (["--storage", "sqlite:///{tmp}/s.db", "--optuna", "0"], "--optuna 0"),
    (["--storage", "sqlite:///{tmp}/s.db", "--optuna", "10000000"], "--optuna 10000000"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[f"{i}-{' '.join(e)[:40]}" for i, (e, _) in enumerate(BAD)])
def test_storage_mistakes_are_one_line(extra, message, tiny_model_dir, glue_dir, tmp_path, capsys) -> None:
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    root = tmp_path / "sweep"
    try:
        code = main(argv(tiny_model_dir, glue_dir, root, tmp_path / "cache", *extra))
    except SystemExit as exit_:  # argparse's own type errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and SECRET not in err and len(err) < 2000, err
    assert not root.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_different_sweep_in_the_same_study_is_refused(tiny_model_dir, glue_dir, tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="sweep", direction="maximize")
    study.set_user_attr("space", {"kind": "grid", "task": "rte", "grid": {"learning_rate": [0.5]}, "seeds": [0]})
    study.set_user_attr("ready", True)
    code = main(argv(tiny_model_dir, glue_dir, tmp_path / "sweep", tmp_path / "cache", "--storage", url))
    err = capsys.readouterr().err
    assert code == 2 and "holds a sweep over" in err and "--study-name" in err, err
    assert len(study_of(url).trials) == 0  # nothing was enqueued into somebody else's study

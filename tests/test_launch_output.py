"""Under a multi-process launch (accelerate launch / torchrun set RANK and WORLD_SIZE) every command prints
its tables, JSON lines and notes once, from process 0; a sweep that hands trials out per process
(--storage, --optuna) is refused there, and a --grid sweep trains each trial with all the processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from roberta_lora.cli.main import main
from roberta_lora.cli.output import world_size

from fixtures_glue import write_glue_fixture


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    write_glue_fixture(root, "rte", n_train=16, n_dev=8)
    return root


@pytest.fixture()
def root_handler_levels():
    """`main` quiets the log handlers of a process that is not rank 0; put them back for the next test."""
    handlers = list(logging.getLogger().handlers)
    levels = [h.level for h in handlers]
    yield
    for handler, level in zip(handlers, levels, strict=True):
        handler.setLevel(level)


def common(model: Path, data: Path, tmp_path: Path) -> list[str]:
    return ["--model", str(model), "--data-dir", str(data), "--epochs", "1", "--batch-size", "8", "--no-progress",
            "--cache-dir", str(tmp_path / "cache"), "--max-eval-samples", "4"]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_process_0_prints(rank, tiny_model_dir, glue_dir, tmp_path, capsys, monkeypatch,
                               root_handler_levels) -> None:
    monkeypatch.setenv("RANK", rank)
    flags = common(tiny_model_dir, glue_dir, tmp_path)
    adapter = tmp_path / "all" / "rte-lora" / "adapter"
    commands = {
        "train-all": ["train-all", "--tasks", "rte", "--output-dir", str(tmp_path / "all"), *flags],
        "sweep": ["sweep", "--task", "rte", "--grid", "lr=1e-3", "--output-dir", str(tmp_path / "sweep"), *flags],
        "report": ["report", str(tmp_path / "all")],
        "predict": ["predict", "--adapter", str(adapter), "--text", "a fine film", "--no-progress"],
        # a full split after a --max-eval-samples run: a note on stderr
        "evaluate": ["evaluate", "--adapter", str(adapter), "--data-dir", str(glue_dir), "--no-progress",
                     "--cache-dir", str(tmp_path / "cache")],
    }
    for name, argv in commands.items():
        assert main(argv) == 0, name
        out, err = capsys.readouterr()
        if rank == "0":
            assert out.strip(), name
            if name == "evaluate":
                assert "note:" in err
        else:
            assert out == "", (name, out)
            assert "note:" not in err and "wrote" not in err and "|" not in err, (name, err)
    # the files are written whichever rank runs alone
    assert (tmp_path / "all" / "train-all.md").is_file() and (tmp_path / "sweep" / "sweep.md").is_file()


@pytest.mark.parametrize("extra", [["--storage", "sqlite:///{tmp}/s.db"], ["--optuna", "2"],
                                   ["--storage", "journal:{tmp}/s.log", "--optuna", "3"]])
def test_a_sweep_that_hands_out_trials_per_process_is_refused_under_a_launch(extra, tiny_model_dir, glue_dir,
                                                                            tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    before = sorted(os.listdir(tmp_path))
    argv = ["sweep", "--task", "rte", "--grid", "lr=1e-3,2e-3", "--output-dir", str(tmp_path / "sweep"),
            *[e.replace("{tmp}", str(tmp_path)) for e in extra], *common(tiny_model_dir, glue_dir, tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "under a launch of 2 processes" in err and "one sweep worker per GPU" in err, err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


@pytest.mark.parametrize(("value", "size"), [("4", 4), (" 2 ", 2), ("1", 1), ("", 1), ("0", 1), ("-2", 1),
                                             ("two", 1), ("\u00b2", 1), ("\u0663", 1), ("2.0", 1)])
def test_world_size_reads_only_a_positive_ascii_integer(value, size, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", value)
    assert world_size() == size


@pytest.mark.slow
def test_a_grid_sweep_under_accelerate_launch_trains_each_trial_with_both_processes(tiny_model_dir, glue_dir,
                                                                                    tmp_path) -> None:
    root = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "roberta_lora", "sweep", "--task", "rte", "--grid", "lr=1e-3,2e-3", "--seeds", "0",
               "--output-dir", str(root), *common(tiny_model_dir, glue_dir, tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("written:") == 1 and done.stdout.count("Ranked by") == 1, done.stdout  # one table
    for trial in ("trial-000", "trial-001"):
        config = json.loads((root / trial / "seed-0" / "config.json").read_text())
        assert config["resolved"]["num_processes"] == 2, trial
    assert sorted(p.name for p in root.iterdir()) == ["sweep.csv", "sweep.json", "sweep.md", "trial-000",
                                                      "trial-001"]


def test_another_process_writing_sweep_json_is_no_foreign_folder(tmp_path) -> None:
    """The ranks of a launch check the folder while process 0 may be writing sweep.json (a hidden temporary
    file beside it): that folder is still empty; any other file makes it foreign."""
    from roberta_lora.errors import ConfigError
    from roberta_lora.training.sweep import check_sweep_folder

    space = {"kind": "grid", "task": "rte", "grid": {"learning_rate": [0.001]}, "seeds": [0]}
    (tmp_path / ".sweep.json.k3j2h1.tmp.json").write_text("{")
    check_sweep_folder(tmp_path, space)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a roberta-lora sweep"):
        check_sweep_folder(tmp_path, space)

"""Every option of every command explains itself in --help."""

from __future__ import annotations

import argparse

import pytest

from roberta_lora.cli.main import build_parser, main


def test_every_option_of_every_command_has_help_text() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {'/'.join(action.option_strings)}" for name, sub in commands.items()
               for action in sub._actions
               if action.option_strings and action.help in (None, "") and not isinstance(action, argparse._HelpAction)]
    assert not missing, missing
    assert {"train", "evaluate", "predict", "train-all", "params", "inspect", "data-info", "score", "merge",
            "export-peft", "import-peft"} <= set(commands)


def test_every_command_takes_no_progress() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    lacking = [name for name, sub in commands.items()
               if not any("--no-progress" in action.option_strings for action in sub._actions)]
    assert lacking == []


def test_predict_no_progress_prints_no_bar(tiny_model_dir, tmp_path, capfd) -> None:
    from roberta_lora.cli.main import main
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    LoraWrapperRoberta(model_id=str(tiny_model_dir), num_classes=2, seed=0).save_adapter(tmp_path / "adapter")
    capfd.readouterr()  # building the adapter above drew its own bar
    assert main(["predict", "--adapter", str(tmp_path / "adapter"), "--text", "a fine film", "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert '"prediction"' in out or '"label"' in out, out
    assert "it/s" not in err and "%|" not in err, err


RUN_GLUE_ARGV = ["--model_name_or_path", "m", "--output_dir", "out", "--learning_rate", "1e-3",
                 "--num_train_epochs", "3.0", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
                 "--max_seq_length", "64", "--bf16", "--lora_r", "4", "--lora_alpha", "16", "--warmup_ratio", "0.06",
                 "--weight_decay", "0.1", "--gradient_accumulation_steps", "2", "--max_steps", "10",
                 "--metric_for_best_model", "f1", "--save_total_limit", "2"]
OUR_ARGV = ["--model", "m", "--output-dir", "out", "--lr", "1e-3", "--epochs", "3", "--batch-size", "8",
            "--eval-batch-size", "32", "--max-length", "64", "--mixed-precision", "bf16", "--rank", "4", "--alpha", "16",
            "--warmup-ratio", "0.06", "--weight-decay", "0.1", "--grad-accum", "2", "--max-steps", "10",
            "--metric-for-best", "f1", "--save-total-limit", "2"]


@pytest.mark.parametrize("command", ["train", "train-all", "sweep"])
def test_run_glue_spellings_mean_our_flags(command) -> None:
    from roberta_lora.cli.train import training_overrides

    head = [command] + (["--task_name", "rte"] if command != "train-all" else [])
    theirs = build_parser().parse_args(head + RUN_GLUE_ARGV)
    ours = build_parser().parse_args([command] + (["--task", "rte"] if command != "train-all" else []) + OUR_ARGV)
    assert training_overrides(theirs) == training_overrides(ours)
    assert vars(theirs) == vars(ours)
    assert training_overrides(ours)["learning_rate"] == 1e-3 and theirs.output_dir == "out"


def test_run_glue_spellings_stay_out_of_the_main_help() -> None:
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--learning_rate" in text.split("\n\n")[-1]  # named once, in the epilog
    assert "--per_device_train_batch_size" not in text.split("options:")[1].split("\n\n")[0]


@pytest.mark.parametrize("argv", [
    ["evaluate", "--adapter", "nobody/no-such-adapter"],
    ["evaluate", "--adapter", "{tmp}", "--data-dir", "{tmp}/missing"],
    ["predict", "--adapter", "{tmp}/missing", "--text", "hi"],
    ["report", "{tmp}/missing"],
    ["report", "{tmp}", "--compare", "lora-paper-huge"],
    ["train", "--task", "sst3"],
    ["train", "--task", "sst2", "--learning_rate", "nan"],
    ["train", "--task", "sst2", "--recipe", "pisa"],
])
def test_a_mistake_is_answered_before_torch_is_imported(argv, tmp_path) -> None:
    """What makes an answer take seconds is importing torch and transformers: a mistake never needs them."""
    import subprocess
    import sys

    (tmp_path / "adapter_config.json").write_text("{}")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (f"import sys; from roberta_lora.cli.main import main; rc = main({argv!r}); "
            "sys.exit(90 if 'torch' in sys.modules else rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "error:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("argv", "named"), [
    (["predict", "--adapter", "a", "--txt", "hi"], "unrecognized arguments: --txt (did you mean --text?)"),
    (["predict", "--adapter", "a", "--txt=hi"], "unrecognized arguments: --txt (did you mean --text?)"),
    (["evaluate", "--adaptr", "a"], "unrecognized arguments: --adaptr (did you mean --adapter?)"),
    (["predict", "--adapter", "a", "--zzzzzz"], "unrecognized arguments: --zzzzzz"),
    # nothing mistyped: argparse's own message (a text that starts with -- but holds a space is a value)
    (["predict", "--adapter", "a"], "one of the arguments --text --input is required"),
    (["predict", "--adapter", "a", "--text-pair", "--so so"], "one of the arguments --text --input is required"),
    (["evaluate", "--data-dir", "d"], "the following arguments are required: --adapter"),
])
def test_a_mistyped_flag_is_named_even_when_a_required_one_is_missing(argv, named, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"roberta-lora {argv[0]}: error: {named}"

"""Every option of every command explains itself in --help."""

from __future__ import annotations

import argparse

from roberta_lora.cli.main import build_parser


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

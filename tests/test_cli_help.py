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

"""The `roberta-lora` command line: one subcommand per job, each a thin layer over the Python API.

Subcommands are registered by the modules of this package, each exposing `register(subparsers)`
that adds its parsers and sets `handler=` to a function taking the parsed arguments and returning
an exit code. Errors the user can fix (`RobertaLoraError`) are printed as one clear line, without
a stack trace. Building the parser imports no torch: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from collections.abc import Sequence

from roberta_lora._version import __version__
from roberta_lora.cli import adapters, data, hub, model, report, serve, sweep, train
from roberta_lora.errors import RobertaLoraError

# Modules that add subcommands, in the order `--help` lists them; each has `register(subparsers) -> None`.
COMMAND_MODULES = (model, data, train, sweep, report, adapters, hub, serve)


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, except that a mistyped flag is named even when a required argument is missing too
    (argparse reports the missing one first: `predict --adapter A --txt hi` only said --text was required)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        flags = [token.partition("=")[0] for token in getattr(self, "_given", [])
                 if token.startswith("--") and " " not in token]
        known = list(self._option_string_actions)
        unknown = [flag for flag in flags if not any(option.startswith(flag) for option in known)]
        if unknown and "required" in message:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            message = f"unrecognized arguments: {' '.join(unknown)}" + (f" (did you mean {close[0]}?)" if close else "")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="roberta-lora",
        description="Train, evaluate and share LoRA adapters for RoBERTa on GLUE and SQuAD.",
    )
    parser.add_argument("--version", action="version", version=f"roberta-lora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    for command in subparsers.choices.values():  # the docs: --no-progress silences every bar, in every command
        if not any("--no-progress" in action.option_strings for action in command._actions):
            command.add_argument("--no-progress", action="store_true",
                                 help="no progress bars (transformers' and datasets' included)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Hub clients retry for a long time when offline; local paths never need them to.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    from roberta_lora.cli.output import is_main_process, silence_progress_bars

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not is_main_process():  # the other ranks of a multi-process launch: their errors only, no second copy
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.ERROR)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.ERROR)
    if not args.verbose:  # library load reports ("Loading weights") and retry warnings only with -v
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    if getattr(args, "no_progress", False):
        silence_progress_bars()
    try:
        return int(args.handler(args) or 0)
    except RobertaLoraError as error:
        print(f"roberta-lora {args.command}: error: {shorten(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, permission denied, a folder vanished: one line naming the path
        where = f" {error.filename}" if error.filename else ""
        print(f"roberta-lora {args.command}: error: cannot use{where}: {error.strerror or error}. Free some space, "
              "fix the permissions or choose another path; files written before are kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"roberta-lora {args.command}: interrupted; files written before are kept "
              "(a training run continues with --resume)", file=sys.stderr)
        return 130


MAX_MESSAGE = 1500  # characters: an error quoting a 50 MB line of a broken file must stay readable


def shorten(message: str) -> str:
    """The message, cut in the middle when it is too long to read (what and how-to-fix stay visible)."""
    if len(message) <= MAX_MESSAGE:
        return message
    half = MAX_MESSAGE // 2
    return f"{message[:half]} [... {len(message) - MAX_MESSAGE} characters left out ...] {message[-half:]}"


if __name__ == "__main__":
    sys.exit(main())

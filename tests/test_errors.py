"""`first_line`: how a library's error is quoted inside one of our one-line messages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from roberta_lora.adapters import merge
from roberta_lora.errors import first_line


def test_first_line_takes_the_first_line_and_cuts_it() -> None:
    assert first_line(OSError("  disk full\nmore detail\n")) == "disk full"
    assert first_line(ValueError("x" * 400)) == "x" * 300
    assert first_line(ValueError("x" * 400), limit=200) == "x" * 200
    assert first_line(ValueError("x" * 400), limit=None) == "x" * 400


def test_an_empty_message_is_named_by_its_class() -> None:
    assert first_line(OSError()) == "OSError"
    assert first_line(EOFError("")) == "EOFError"


def test_a_tokenizer_that_fails_without_a_message_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # `str(error).splitlines()[0]` raised IndexError here, turning a warning into a crash of the merge.
    import transformers

    def fail(*args, **kwargs):
        raise OSError()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    monkeypatch.setattr(merge, "resolve_model", lambda source: source)
    with caplog.at_level(logging.WARNING, logger=merge.logger.name):
        assert merge._save_tokenizer(str(tmp_path), tmp_path) is None
    assert f"could not copy a tokenizer from {tmp_path} (OSError)" in caplog.text

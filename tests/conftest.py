"""Shared fixtures: a tiny random RoBERTa checkpoint with a freshly trained tokenizer.

Nothing here touches the network; the checkpoint is built once per test session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models gain nothing from threads, and OpenMP threads competing with other processes
# for 2 cores can make each step 30x slower. Subprocesses (accelerate launch, notebooks) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from roberta_lora.model.toy import DEFAULT_CORPUS, make_toy_roberta, toy_config  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tokenization cache of every test (and of the subprocesses they start) lives in pytest's temporary
    folders, never in the user's ~/.cache/roberta_lora."""
    cache = tmp_path_factory.mktemp("roberta-lora-cache")
    os.environ["ROBERTA_LORA_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local checkpoint dir: hidden 32, 2 layers, 4 heads, byte-level BPE tokenizer."""
    return make_toy_roberta(tmp_path_factory.mktemp("tiny-roberta"), corpus=DEFAULT_CORPUS, seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def tiny_config():
    """A RobertaConfig of the test size (random weights, no files)."""
    return toy_config(vocab_size=400)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data when present; tests that need it are skipped otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts as a new process would, as far as accelerate is concerned.

    accelerate fixes one mixed precision per process (roberta_lora.runtime refuses a second one with
    a clear error); a test process runs many trainings, so it resets that state between tests, the way
    accelerate's own test suite does (`AccelerateTestCase.tearDown`). The library never does this.
    """
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

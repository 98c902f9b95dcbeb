"""The whole pipeline learns: a frozen random tiny RoBERTa + LoRA solves a task a single word decides.

Unit tests prove that gradients reach the right tensors; this proves they add up to learning
through the real data path (TSV -> tokenizer cache -> length-grouped batches -> schedule -> eval).
"""

from __future__ import annotations

import random

from roberta_lora.training.config import TrainConfig
from roberta_lora.training.loop import train

from fixtures_glue import write_tsv

POSITIVE = ("great", "moving", "wonderful")
NEGATIVE = ("terrible", "boring", "bad")
SUBJECTS = ("the movie", "a film", "this story", "the acting", "the plot", "our evening", "it")


def rows(n: int, rng: random.Random) -> list[list[object]]:
    return [[f"{rng.choice(SUBJECTS)} was {rng.choice(POSITIVE if i % 2 else NEGATIVE)} .", i % 2] for i in range(n)]


def test_lora_learns_a_word_level_sentiment_task(tiny_model_dir, tmp_path) -> None:
    rng = random.Random(0)
    write_tsv(tmp_path / "data/SST-2/train.tsv", ["sentence", "label"], rows(256, rng))
    write_tsv(tmp_path / "data/SST-2/dev.tsv", ["sentence", "label"], rows(64, rng))
    result = train(TrainConfig(task="sst2", model=str(tiny_model_dir), data_dir=str(tmp_path / "data"),
                               output_dir=str(tmp_path / "run"), epochs=10, batch_size=32, learning_rate=1e-2,
                               cache_dir=str(tmp_path / "cache")), progress=False)
    assert result.metrics["accuracy"] >= 0.95, result.metrics

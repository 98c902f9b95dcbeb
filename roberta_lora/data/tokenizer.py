"""The tokenizer of a base model, loaded and checked for training, evaluation and prediction alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roberta_lora.errors import ConfigError, first_line
from roberta_lora.sources import resolve_model

# What a local model folder must hold for `AutoTokenizer` to build the real tokenizer; without any of
# them transformers builds a tiny placeholder from config.json and every word becomes <unk>.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "sentencepiece.bpe.model",
                   "spiece.model")


def load_tokenizer(model_id: str) -> Any:
    """`AutoTokenizer.from_pretrained` of a model id (a folder, a packaged model name such as
    all-MiniLM-L6-v2, or a hub id: see `roberta_lora.sources.resolve_model`), with a clear error offline,
    for a folder without tokenizer files, or for a tokenizer that cannot be built."""
    model_id = resolve_model(str(model_id))
    local = Path(model_id)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"--model {model_id} holds no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); copy the "
            "tokenizer of its base next to config.json (tokenizer.save_pretrained(folder))"
        )
    from transformers import AutoTokenizer  # seconds to import: only when a tokenizer is needed

    try:
        return AutoTokenizer.from_pretrained(model_id)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ConfigError(
            f"could not load a tokenizer from {model_id!r} ({first_line(error)}). Without network "
            "access pass a local checkpoint directory with --model (it must hold the tokenizer files too)"
        ) from None


def check_pair_structure(tokenizer: Any, model_id: str) -> None:
    """A sentence-pair task needs a tokenizer that marks where the second text starts (RoBERTa's
    `</s></s>`, BERT's `[SEP]`); one that only concatenates the texts would train on run-on pairs."""
    single = len(tokenizer("a")["input_ids"]) + len(tokenizer("b", add_special_tokens=False)["input_ids"])
    if len(tokenizer("a", "b")["input_ids"]) <= single:
        raise ConfigError(
            f"the tokenizer of {model_id} does not separate the two texts of a pair (no separator tokens between "
            "them); give it a post-processor such as RoBERTa's (`<s> A </s></s> B </s>`), or use the base's own "
            "tokenizer files"
        )


def check_max_length(max_length: int, model_config: Any, model_id: str) -> None:
    """Refuse a sequence length the model's position table cannot hold (RoBERTa reserves two positions
    for its padding offset: 514 positions hold 512 tokens)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return
    offset = getattr(model_config, "pad_token_id", -1) + 1 if model_config.model_type in (
        "roberta", "xlm-roberta", "camembert") else 0
    limit = positions - offset
    if max_length > limit:
        raise ConfigError(f"--max-length {max_length} is more than the {limit} tokens {model_id}'s position table "
                          f"holds; use --max-length {limit} or less")


def check_vocabulary(tokenizer: Any, model_config: Any, model_id: str) -> None:
    """The tokenizer may not produce ids past the model's embedding table (they would fail mid-training)."""
    rows = getattr(model_config, "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        raise ConfigError(f"the tokenizer in {model_id} has {len(tokenizer)} tokens but the model's embedding table "
                          f"only {rows} rows; the tokenizer files belong to another model: copy the base's own")

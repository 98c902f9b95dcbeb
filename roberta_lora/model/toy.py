"""Small random RoBERTa checkpoints for tests, notebooks and benchmarks, built offline.

Hub downloads are not always possible (CI, air-gapped machines), so everything that needs
"a RoBERTa" without caring about its quality uses `make_toy_roberta`: it trains a byte-level
BPE tokenizer on a few sentences with `tokenizers`, builds a `RobertaModel` with random
weights and saves both as an ordinary local checkpoint directory that `AutoTokenizer` and
`LoraWrapperRoberta(model_id=...)` load like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

# Enough varied English that the BPE learns real merges; tests add their own texts.
DEFAULT_CORPUS = [
    "The movie was a great and moving experience.",
    "A boring, terrible film with bad acting.",
    "The cat sat on the mat while the dog slept.",
    "Who wrote the book? The author wrote it in 1990 in Paris.",
    "Is the second sentence entailed by the first one?",
    "Normandy is a region in France; the Normans gave their name to it.",
    "How many people live in the city of Denver, Colorado?",
    "Two sentences can be paraphrases of each other, or not.",
    "It's 3.5 degrees colder today than yesterday, isn't it?",
]


def train_toy_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 400) -> RobertaTokenizer:
    """Train a RoBERTa-style byte-level BPE tokenizer (fast, with offsets) on `corpus`."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(list(corpus), vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    # <s> A </s></s> B </s>, exactly like roberta-base's tokenizer.
    bpe._tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")), trim_offsets=True, add_prefix_space=False
    )
    return RobertaTokenizer(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def toy_config(
    vocab_size: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_positions: int = 514,
) -> RobertaConfig:
    """A RoBERTa config of the given size (defaults: hidden 32, 2 layers, as in the tests)."""
    return RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )


def roberta_base_config(vocab_size: int = 50265) -> RobertaConfig:
    """roberta-base's dimensions (12 layers, hidden 768, 12 heads, FFN 3072)."""
    return toy_config(vocab_size, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)


def make_toy_roberta(
    output_dir: str | Path,
    corpus: Iterable[str] = DEFAULT_CORPUS,
    seed: int = 0,
    vocab_size: int = 400,
    **config_kwargs: int,
) -> Path:
    """Save a random RoBERTa encoder and a matching tokenizer under `output_dir`.

    Args:
        output_dir: directory to create (a normal `save_pretrained` checkpoint).
        corpus: sentences the tokenizer is trained on.
        seed: seed for the random weights, so two calls give the same model.
        vocab_size: BPE vocabulary size to aim for.
        **config_kwargs: forwarded to `toy_config` (hidden_size, num_layers, ...).

    Returns:
        The checkpoint directory.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_toy_tokenizer(corpus, vocab_size=vocab_size)
    tokenizer.save_pretrained(output_dir)
    torch.manual_seed(seed)
    model = RobertaModel(toy_config(len(tokenizer), **config_kwargs), add_pooling_layer=False)
    model.save_pretrained(output_dir)
    return output_dir

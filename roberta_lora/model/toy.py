"""Small random encoder checkpoints for tests, notebooks and benchmarks, built offline.

Hub downloads are not always possible (CI, air-gapped machines), so everything that needs
"a RoBERTa" (or a BERT, a DistilBERT, ...) without caring about its quality uses `make_toy_roberta`
/ `make_toy_encoder`: it trains a tokenizer on a few sentences with `tokenizers` (byte-level BPE for
the RoBERTa-style families, WordPiece for BERT and DistilBERT), builds the family's encoder with
random weights and saves both as an ordinary local checkpoint directory that `AutoTokenizer` and
`LoraWrapperRoberta(model_id=...)` load like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, processors
from transformers import (
    BertConfig,
    BertTokenizer,
    CamembertConfig,
    DistilBertConfig,
    DistilBertTokenizer,
    PretrainedConfig,
    RobertaConfig,
    RobertaTokenizer,
    XLMRobertaConfig,
)

from roberta_lora.model.families import build_encoder, family_of

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
WORDPIECE_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

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


def train_toy_wordpiece_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 400,
                                  family: str = "bert") -> Any:
    """Train a BERT-style (lower-cased WordPiece) tokenizer on `corpus`: `BertTokenizer`, which returns
    token_type_ids, or for family="distilbert" `DistilBertTokenizer` (the same vocabulary, no token types)."""
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(list(corpus), vocab_size=vocab_size, min_frequency=1,
                                  special_tokens=WORDPIECE_SPECIAL_TOKENS)
    cls = DistilBertTokenizer if family == "distilbert" else BertTokenizer
    return cls(vocab=wordpiece.get_vocab())  # [CLS] A [SEP] B [SEP], like bert-base-uncased's


_ROBERTA_STYLE = {"roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig, "camembert": CamembertConfig}


def toy_config(
    vocab_size: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_positions: int | None = None,
    family: str = "roberta",
) -> PretrainedConfig:
    """An encoder config of the given size and family (defaults: a RoBERTa, hidden 32, 2 layers, as in the tests).

    Args:
        family: "roberta", "xlm-roberta", "camembert" (RoBERTa's special ids, 514 positions, one token type),
            "bert" (pad id 0, 512 positions, two token types) or "distilbert" (dim / n_layers / hidden_dim).
        max_positions: the position table's size (default: the family's, 514 or 512).
    """
    family_of(family, f"toy_config(family={family!r})")  # ConfigError listing the supported ones
    if family in _ROBERTA_STYLE:
        return _ROBERTA_STYLE[family](
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=intermediate_size,
            max_position_embeddings=max_positions or 514, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            type_vocab_size=1,
        )
    if family == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                          num_attention_heads=num_heads, intermediate_size=intermediate_size,
                          max_position_embeddings=max_positions or 512, pad_token_id=0)
    return DistilBertConfig(vocab_size=vocab_size, dim=hidden_size, n_layers=num_layers, n_heads=num_heads,
                            hidden_dim=intermediate_size, max_position_embeddings=max_positions or 512, pad_token_id=0)


def roberta_base_config(vocab_size: int = 50265) -> RobertaConfig:
    """roberta-base's dimensions (12 layers, hidden 768, 12 heads, FFN 3072)."""
    return toy_config(vocab_size, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)


def make_toy_encoder(
    output_dir: str | Path,
    family: str = "roberta",
    corpus: Iterable[str] = DEFAULT_CORPUS,
    seed: int = 0,
    vocab_size: int = 400,
    **config_kwargs: int,
) -> Path:
    """Save a random encoder of `family` and a matching tokenizer under `output_dir`.

    Args:
        output_dir: directory to create (a normal `save_pretrained` checkpoint).
        family: see `toy_config` ("roberta", "xlm-roberta", "camembert", "bert", "distilbert").
        corpus: sentences the tokenizer is trained on.
        seed: seed for the random weights, so two calls give the same model.
        vocab_size: tokenizer vocabulary size to aim for.
        **config_kwargs: forwarded to `toy_config` (hidden_size, num_layers, ...).

    Returns:
        The checkpoint directory.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    family_of(family, f"make_toy_encoder(family={family!r})")  # ConfigError listing the supported ones
    if family in _ROBERTA_STYLE:
        tokenizer = train_toy_tokenizer(corpus, vocab_size=vocab_size)
    else:
        tokenizer = train_toy_wordpiece_tokenizer(corpus, vocab_size=vocab_size, family=family)
    tokenizer.save_pretrained(output_dir)
    torch.manual_seed(seed)
    model = build_encoder(toy_config(len(tokenizer), family=family, **config_kwargs))
    model.save_pretrained(output_dir)
    return output_dir


def make_toy_roberta(
    output_dir: str | Path,
    corpus: Iterable[str] = DEFAULT_CORPUS,
    seed: int = 0,
    vocab_size: int = 400,
    **config_kwargs: int,
) -> Path:
    """Save a random RoBERTa encoder and a matching tokenizer under `output_dir` (see `make_toy_encoder`)."""
    return make_toy_encoder(output_dir, "roberta", corpus, seed, vocab_size, **config_kwargs)

"""SQuAD v1.1 / v2.0 features: (question, context) pairs cut into overlapping windows.

A context longer than the model's window is cut into overlapping windows ("features"), each
`<s> question </s></s> context-slice </s>`. Training labels are token indices of the first
gold answer inside a window; a window that does not contain the whole answer, or a question
with no answer (v2), points at `<s>` (index 0): the null-score scheme, so "no answer here" is
just another span the model can score. Evaluation features keep the character offsets of the
context tokens so `squad_postprocess` can map predicted tokens back to text.

Features are not padded here: the collator pads each batch to its longest feature, on the
right, so that token indices (labels, offsets) stay valid.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from roberta_lora.errors import ConfigError, DataError

NULL_INDEX = 0  # the `<s>` token: where "no answer in this window" is labelled and scored


def _column(data: Any, name: str) -> list:
    """One column of a `Dataset`, a batch dict or a list of row dicts, as a list."""
    try:
        if isinstance(data, list):
            return [row[name] for row in data]
        return list(data[name])
    except KeyError:
        have = getattr(data, "column_names", None) or sorted(
            data[0] if isinstance(data, list) else data.keys()
        )
        raise DataError(
            f"SQuAD data has no column {name!r} (columns: {have}); expected the hub's SQuAD columns "
            "id, title, context, question, answers (and example_id, offset_mapping for eval features)."
        ) from None


def _question_ids(examples: Any) -> list:
    """The `id` column, or row numbers when there is none (for error messages)."""
    try:
        return _column(examples, "id")
    except DataError:
        return list(range(len(_column(examples, "question"))))


def _tokenize_windows(
    examples: Any, tokenizer: PreTrainedTokenizerBase, max_length: int, doc_stride: int
) -> tuple[Any, list[str]]:
    """Tokenize (question, context) pairs into overlapping windows of at most `max_length`."""
    if not tokenizer.is_fast:
        raise ConfigError(
            f"SQuAD features need a fast tokenizer (for offsets); got {type(tokenizer).__name__}."
        )
    if tokenizer.padding_side != "right":
        raise ConfigError(
            f"tokenizer.padding_side is {tokenizer.padding_side!r}; SQuAD labels and offsets are token "
            "indices counted from the left, so batches must be padded on the right. "
            "Set tokenizer.padding_side = 'right'."
        )
    if not 0 <= doc_stride < max_length:
        raise ConfigError(f"doc_stride must be in [0, max_length={max_length}); got {doc_stride}.")
    # Leading spaces in some SQuAD questions only waste tokens (and shift the window).
    questions = [q.lstrip() for q in _column(examples, "question")]
    contexts = _column(examples, "context")
    # The tokenizer aborts (a Rust panic) when the question leaves no room for `doc_stride`
    # context tokens, so check first and say which question is too long.
    special = tokenizer.num_special_tokens_to_add(pair=True)
    question_lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for i, n_question in enumerate(question_lengths):
        if max_length - special - n_question <= doc_stride:
            qid = _question_ids(examples)[i]
            raise ConfigError(
                f"question {qid!r} has {n_question} tokens, which leaves {max_length - special - n_question} "
                f"context tokens per window of max_length={max_length}, not more than doc_stride={doc_stride}. "
                "Raise max_length or lower doc_stride."
            )
    encoding = tokenizer(
        questions,
        contexts,
        truncation="only_second",  # never cut the question, only the context
        max_length=max_length,
        stride=doc_stride,  # tokens shared by consecutive windows
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    return encoding, contexts


def _context_range(encoding: Any, i: int) -> tuple[int, int]:
    """First and last token index of the context inside window `i` (sequence id 1)."""
    sequence_ids = encoding.sequence_ids(i)
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    return first, last


def prepare_train_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 384,
    doc_stride: int = 128,
) -> dict[str, list]:
    """Windows with start/end labels, for `Dataset.map(batched=True, remove_columns=...)`.

    Args:
        examples: a batch with SQuAD columns (`question`, `context`, `answers`; `id` for errors).
        tokenizer: a fast tokenizer that pads on the right.
        max_length: tokens per window, special tokens included.
        doc_stride: tokens of context shared by consecutive windows of one question.

    Returns:
        Columns input_ids, attention_mask, start_positions, end_positions (one row per window,
        unpadded). Labels are the first gold answer's token span, or (0, 0) when the window does
        not hold the whole answer or the question has none.
    """
    encoding, contexts = _tokenize_windows(examples, tokenizer, max_length, doc_stride)
    answers = _column(examples, "answers")
    ids = _question_ids(examples)
    starts: list[int] = []
    ends: list[int] = []
    for i, offsets in enumerate(encoding["offset_mapping"]):
        sample = encoding["overflow_to_sample_mapping"][i]
        answer = answers[sample]
        if not answer["answer_start"]:  # v2 unanswerable
            starts.append(NULL_INDEX)
            ends.append(NULL_INDEX)
            continue
        start_char = answer["answer_start"][0]
        text = answer["text"][0]
        end_char = start_char + len(text)
        if contexts[sample][start_char:end_char] != text:
            raise DataError(
                f"answer of question {ids[sample]!r} does not match its context: answer_start={start_char} gives "
                f"{contexts[sample][start_char:end_char]!r}, text is {text!r}. Fix answer_start or drop it."
            )
        first, last = _context_range(encoding, i)
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(NULL_INDEX)
            ends.append(NULL_INDEX)
            continue
        # Offsets grow along the window: the start token is the last one starting at or before
        # the answer, the end token the first one ending at or after it.
        start_token = first
        while start_token < last and offsets[start_token + 1][0] <= start_char:
            start_token += 1
        end_token = last
        while end_token > start_token and offsets[end_token - 1][1] >= end_char:
            end_token -= 1
        starts.append(start_token)
        ends.append(end_token)
    return {
        "input_ids": encoding["input_ids"],
        "attention_mask": encoding["attention_mask"],
        "start_positions": starts,
        "end_positions": ends,
        **({"token_type_ids": encoding["token_type_ids"]} if "token_type_ids" in encoding else {}),
    }


def prepare_eval_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 384,
    doc_stride: int = 128,
) -> dict[str, list]:
    """Windows for evaluation: the model inputs plus what post-processing needs.

    Same windows as `prepare_train_features`. Returns columns input_ids, attention_mask,
    example_id (the question id of each window) and offset_mapping: `[start_char, end_char]`
    for context tokens and None for every other token, so only context spans can be predicted.
    Drop example_id and offset_mapping before feeding the model.
    """
    encoding, _ = _tokenize_windows(examples, tokenizer, max_length, doc_stride)
    ids = _column(examples, "id")
    example_ids: list[str] = []
    offset_mapping: list[list[list[int] | None]] = []
    for i, offsets in enumerate(encoding["offset_mapping"]):
        example_ids.append(ids[encoding["overflow_to_sample_mapping"][i]])
        sequence_ids = encoding.sequence_ids(i)
        offset_mapping.append(
            [list(o) if s == 1 else None for o, s in zip(offsets, sequence_ids, strict=True)]
        )
    return {
        "input_ids": encoding["input_ids"],
        "attention_mask": encoding["attention_mask"],
        "example_id": example_ids,
        "offset_mapping": offset_mapping,
        **({"token_type_ids": encoding["token_type_ids"]} if "token_type_ids" in encoding else {}),
    }

"""SQuAD windows, labels and span decoding on hand-made examples with the tiny tokenizer.

Small windows (max_length 48, doc_stride 16) over a ~330-character context give each question
five or six windows, so answers fall in late windows, straddle window borders, or sit at the
very start and end of the context.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset

from roberta_lora.data.squad_features import prepare_eval_features, prepare_train_features
from roberta_lora.errors import ConfigError, DataError
from roberta_lora.evaluation.squad_postprocess import postprocess_predictions

MAX_LENGTH, STRIDE = 48, 16
CONTEXT = (
    "Normandy is a region in France. The Normans gave their name to it. "
    "The cat sat on the mat while the dog slept. The author wrote the book in 1990 in Paris. "
    "How many people live in the city of Denver? Two sentences can be paraphrases of each other. "
    "It is colder today than yesterday. The movie was a great and moving experience in Denver"
)


def _example(qid: str, question: str, answer: str | None, start: int | None = None) -> dict:
    if answer is None:
        answers = {"text": [], "answer_start": []}
    else:
        answers = {"text": [answer], "answer_start": [CONTEXT.index(answer) if start is None else start]}
    return {"id": qid, "title": "toy", "context": CONTEXT, "question": question, "answers": answers}


EXAMPLES = [
    _example("middle", "Who wrote the book?", "1990 in Paris"),
    _example("first", "Where is Normandy?", "Normandy"),  # the very first characters
    _example("last", "   Where was the movie?", "Denver", start=CONTEXT.rindex("Denver")),  # the very end
    _example("none", "Is it colder?", None),  # v2 unanswerable
    _example("early", "Who slept?", "the dog slept"),
    _example("long", "What can sentences be?", "paraphrases of each other"),
]
ANSWERABLE = {e["id"]: e["answers"]["text"][0] for e in EXAMPLES if e["answers"]["text"]}


def _batch(examples: list[dict]) -> dict[str, list]:
    return {key: [e[key] for e in examples] for key in examples[0]}


@pytest.fixture(scope="module")
def features(tiny_tokenizer) -> tuple[dict, dict]:
    batch = _batch(EXAMPLES)
    return (
        prepare_train_features(batch, tiny_tokenizer, MAX_LENGTH, STRIDE),
        prepare_eval_features(batch, tiny_tokenizer, MAX_LENGTH, STRIDE),
    )


def _context_chars(offsets: list) -> tuple[int, int]:
    """Character range of the context covered by one window."""
    spans = [o for o in offsets if o is not None]
    return spans[0][0], spans[-1][1]


def _token_span(offsets: list, start_char: int, end_char: int) -> tuple[int, int]:
    """Token indices of the tokens that exactly start and end at the given characters."""
    start = next(i for i, o in enumerate(offsets) if o is not None and o[0] == start_char)
    end = next(i for i, o in enumerate(offsets) if o is not None and o[1] == end_char)
    return start, end


# ---------------------------------------------------------------- features


def test_windows_fit_max_length_and_overlap(features) -> None:
    train, evaluation = features
    lengths = [len(ids) for ids in train["input_ids"]]
    assert max(lengths) == MAX_LENGTH  # the contexts really were cut
    assert all(n <= MAX_LENGTH for n in lengths)
    assert train["input_ids"] == evaluation["input_ids"]  # same windows for training and eval
    assert sorted(train) == ["attention_mask", "end_positions", "input_ids", "start_positions"]
    for qid in ANSWERABLE:
        rows = _rows(evaluation, qid)
        assert len(rows) >= 3
        ranges = [_context_chars(evaluation["offset_mapping"][i]) for i in rows]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(CONTEXT)
        assert all(nxt[0] < prev[1] for prev, nxt in zip(ranges, ranges[1:], strict=False))  # overlap


def test_train_labels_recover_the_gold_answer_or_point_at_cls(features) -> None:
    train, evaluation = features
    golds = {e["id"]: e["answers"] for e in EXAMPLES}
    seen = {"labelled": 0, "outside": 0, "partial": 0}
    for i, qid in enumerate(evaluation["example_id"]):
        start, end = train["start_positions"][i], train["end_positions"][i]
        offsets = evaluation["offset_mapping"][i]
        if not golds[qid]["text"]:
            assert (start, end) == (0, 0)
            continue
        gold_start = golds[qid]["answer_start"][0]
        gold_end = gold_start + len(golds[qid]["text"][0])
        first, last = _context_chars(offsets)
        if first <= gold_start and gold_end <= last:
            assert 0 < start <= end
            assert CONTEXT[offsets[start][0] : offsets[end][1]] == golds[qid]["text"][0]
            seen["labelled"] += 1
        else:
            assert (start, end) == (0, 0)
            partial = first <= gold_start < last or first < gold_end <= last
            seen["partial" if partial else "outside"] += 1
    assert all(seen.values()), seen  # every branch was exercised
    # An answer in a late window, and the answers at the very start and end, are labelled.
    labelled = {evaluation["example_id"][i] for i, s in enumerate(train["start_positions"]) if s}
    assert labelled == set(ANSWERABLE)


def test_leading_spaces_in_questions_are_dropped(tiny_tokenizer) -> None:
    padded = _example("q", "    Who wrote the book?", "1990 in Paris")
    plain = _example("q", "Who wrote the book?", "1990 in Paris")
    a = prepare_train_features(_batch([padded]), tiny_tokenizer, MAX_LENGTH, STRIDE)
    b = prepare_train_features(_batch([plain]), tiny_tokenizer, MAX_LENGTH, STRIDE)
    assert a == b


def test_eval_features_have_example_ids_and_no_offsets_outside_the_context(features, tiny_tokenizer) -> None:
    _, evaluation = features
    assert sorted(evaluation) == ["attention_mask", "example_id", "input_ids", "offset_mapping"]
    assert set(evaluation["example_id"]) == {e["id"] for e in EXAMPLES}
    assert evaluation["example_id"] == sorted(evaluation["example_id"], key=[e["id"] for e in EXAMPLES].index)
    sep = tiny_tokenizer.sep_token_id
    for ids, offsets in zip(evaluation["input_ids"], evaluation["offset_mapping"], strict=True):
        assert len(ids) == len(offsets)
        context_start = max(i for i, t in enumerate(ids[:-1]) if t == sep) + 1  # after </s></s>
        assert all(o is None for o in offsets[:context_start])  # <s>, question, separators
        assert offsets[-1] is None  # closing </s>
        assert all(o is not None for o in offsets[context_start:-1])


def test_bad_inputs_raise_clear_errors(tiny_tokenizer, monkeypatch) -> None:
    batch = _batch([_example("q", "Who wrote the book?", "1990 in Paris")])
    with pytest.raises(ConfigError, match="doc_stride"):
        prepare_train_features(batch, tiny_tokenizer, max_length=48, doc_stride=48)
    long_question = _batch([_example("q", "Who wrote the book? " * 10, "1990 in Paris")])
    with pytest.raises(ConfigError, match="question 'q' has .* Raise max_length"):  # not a tokenizer panic
        prepare_eval_features(long_question, tiny_tokenizer, max_length=48, doc_stride=16)
    wrong = _batch([_example("q", "Who wrote the book?", "1990 in Paris", start=3)])
    with pytest.raises(DataError, match="does not match its context"):
        prepare_train_features(wrong, tiny_tokenizer, MAX_LENGTH, STRIDE)
    monkeypatch.setattr(tiny_tokenizer, "padding_side", "left")
    with pytest.raises(ConfigError, match="padding_side"):
        prepare_train_features(batch, tiny_tokenizer, MAX_LENGTH, STRIDE)


# ---------------------------------------------------------------- post-processing


def _flat_logits(evaluation: dict, value: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-feature start/end logits of each feature's own length, all equal to `value`."""
    starts = [np.full(len(o), value) for o in evaluation["offset_mapping"]]
    ends = [np.full(len(o), value) for o in evaluation["offset_mapping"]]
    return starts, ends


def _rows(evaluation: dict, qid: str) -> list[int]:
    return [i for i, e in enumerate(evaluation["example_id"]) if e == qid]


def _rows_holding(evaluation: dict, qid: str) -> list[int]:
    """The windows of `qid` that hold its whole gold answer."""
    start = CONTEXT.index(ANSWERABLE[qid])
    end = start + len(ANSWERABLE[qid])
    ranges = {i: _context_chars(evaluation["offset_mapping"][i]) for i in _rows(evaluation, qid)}
    return [i for i, (first, last) in ranges.items() if first <= start and end <= last]


def test_best_span_in_a_later_window_is_decoded_exactly(features) -> None:
    _, evaluation = features
    starts, ends = _flat_logits(evaluation)
    gold = ANSWERABLE["long"]
    gold_start = CONTEXT.index(gold)
    # The last window that holds the whole answer (not the first window of the question).
    row = _rows_holding(evaluation, "long")[-1]
    assert row != _rows(evaluation, "long")[0]
    s, e = _token_span(evaluation["offset_mapping"][row], gold_start, gold_start + len(gold))
    starts[row][s], ends[row][e] = 5.0, 4.0
    result = postprocess_predictions(EXAMPLES, evaluation, starts, ends, version_2=False)
    assert result.predictions["long"] == gold
    best = result.nbest["long"][0]
    assert (best["text"], best["start_logit"], best["end_logit"]) == (gold, 5.0, 4.0)
    assert sum(c["probability"] for c in result.nbest["long"]) == pytest.approx(1.0)
    assert result.null_odds == {}


@pytest.mark.parametrize("trap", ["end_before_start", "too_long", "in_question"])
def test_invalid_spans_are_never_chosen(features, trap: str) -> None:
    _, evaluation = features
    # A low background, so that pairing a trap token with any other token scores below the gold.
    starts, ends = _flat_logits(evaluation, value=-100.0)
    gold = ANSWERABLE["middle"]
    gold_start = CONTEXT.index(gold)
    row = _rows_holding(evaluation, "middle")[0]
    offsets = evaluation["offset_mapping"][row]
    s, e = _token_span(offsets, gold_start, gold_start + len(gold))
    starts[row][s], ends[row][e] = 3.0, 3.0  # the gold span: score 6
    # Trap tokens score 10 each; every pair they form (with each other or with the gold's
    # ends) breaks exactly the rule under test.
    if trap == "end_before_start":
        trap_start, trap_end = e + 2, s - 2
    elif trap == "too_long":
        trap_start, trap_end = s - 3, e + 3
    else:
        first_context = next(i for i, o in enumerate(offsets) if o is not None)
        trap_start, trap_end = first_context - 4, first_context - 3  # question tokens
        assert offsets[trap_start] is None and offsets[trap_end] is None and trap_start > 0
    starts[row][trap_start], ends[row][trap_end] = 10.0, 10.0
    result = postprocess_predictions(
        EXAMPLES, evaluation, starts, ends, version_2=False, max_answer_length=e - s + 1
    )
    assert result.predictions["middle"] == gold
    assert result.nbest["middle"][0]["start_logit"] == 3.0


def _one_window_example() -> dict:
    context = "The author wrote the book in 1990 in Paris."
    return {
        "id": "q",
        "title": "t",
        "context": context,
        "question": "When?",
        "answers": {"text": [], "answer_start": []},
    }


@pytest.mark.parametrize(("threshold", "expected"), [(1.0, ""), (2.0, "1990")])
def test_v2_null_threshold_and_null_odds(tiny_tokenizer, threshold: float, expected: str) -> None:
    example = _one_window_example()
    evaluation = prepare_eval_features(_batch([example]), tiny_tokenizer, MAX_LENGTH, STRIDE)
    assert len(evaluation["input_ids"]) == 1
    starts, ends = _flat_logits(evaluation, value=-5.0)
    s, e = _token_span(evaluation["offset_mapping"][0], 29, 33)  # "1990"
    starts[0][s], ends[0][e] = 2.0, 2.5  # span score 4.5
    starts[0][0], ends[0][0] = 3.0, 3.0  # null score 6.0
    result = postprocess_predictions(
        [example], evaluation, starts, ends, version_2=True, null_score_diff_threshold=threshold
    )
    assert result.predictions["q"] == expected
    assert result.null_odds["q"] == pytest.approx(1.5)
    assert {c["text"] for c in result.nbest["q"]} >= {"", "1990"}
    # v1 has no null answer at all.
    v1 = postprocess_predictions([example], evaluation, starts, ends, version_2=False)
    assert v1.predictions["q"] == "1990" and "" not in {c["text"] for c in v1.nbest["q"]}


def test_v2_null_score_is_the_minimum_over_windows(features) -> None:
    _, evaluation = features
    starts, ends = _flat_logits(evaluation, value=-5.0)
    rows = _rows(evaluation, "none")
    for k, row in enumerate(rows):  # null scores 2, 4, 6, ... : the minimum is 2
        starts[row][0] = ends[row][0] = 1.0 + k
    starts[rows[-1]][-3] = ends[rows[-1]][-2] = 0.5  # best span: 1.0
    result = postprocess_predictions(EXAMPLES, evaluation, starts, ends, version_2=True)
    assert result.null_odds["none"] == pytest.approx(2.0 - 1.0)
    assert result.predictions["none"] == ""


def test_no_valid_span_gives_the_placeholder(tiny_tokenizer) -> None:
    example = _one_window_example()
    evaluation = prepare_eval_features(_batch([example]), tiny_tokenizer, MAX_LENGTH, STRIDE)
    starts, ends = _flat_logits(evaluation)
    starts[0][1] = ends[0][1] = 9.0  # with n_best_size=1 only a question token is tried
    for version_2 in (False, True):
        result = postprocess_predictions(
            [example], evaluation, starts, ends, version_2=version_2, n_best_size=1
        )
        assert result.predictions["q"] == ""
        assert result.nbest["q"][0]["text"] in {"empty", ""}


def test_json_files_are_written(features, tmp_path) -> None:
    _, evaluation = features
    starts, ends = _flat_logits(evaluation)
    for version_2, out in ((True, tmp_path / "v2"), (False, tmp_path / "v1")):
        result = postprocess_predictions(
            EXAMPLES, evaluation, starts, ends, version_2=version_2, output_dir=out
        )
        names = {"predictions.json", "nbest_predictions.json"} | ({"null_odds.json"} if version_2 else set())
        assert {p.name for p in out.iterdir()} == names  # no temp files left behind
        ids = {e["id"] for e in EXAMPLES}
        predictions = json.loads((out / "predictions.json").read_text())
        assert predictions == result.predictions and set(predictions) == ids
        nbest = json.loads((out / "nbest_predictions.json").read_text())
        assert set(nbest) == ids
        assert all(
            set(c) == {"text", "probability", "start_logit", "end_logit"} for v in nbest.values() for c in v
        )
        if version_2:
            assert json.loads((out / "null_odds.json").read_text()) == pytest.approx(result.null_odds)
            assert set(result.null_odds) == ids


def test_padded_array_and_variable_length_list_agree(features) -> None:
    _, evaluation = features
    rng = np.random.default_rng(0)
    starts = [rng.normal(size=len(o)) for o in evaluation["offset_mapping"]]
    ends = [rng.normal(size=len(o)) for o in evaluation["offset_mapping"]]
    width = max(len(s) for s in starts) + 5
    # Huge values in the padding would win if padding were not ignored.
    padded_starts = np.full((len(starts), width), 100.0)
    padded_ends = np.full((len(ends), width), 100.0)
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        padded_starts[i, : len(s)], padded_ends[i, : len(e)] = s, e
    from_list = postprocess_predictions(EXAMPLES, evaluation, starts, ends, version_2=True)
    from_array = postprocess_predictions(EXAMPLES, evaluation, padded_starts, padded_ends, version_2=True)
    assert from_list == from_array
    with pytest.raises(ConfigError, match="features but"):
        postprocess_predictions(EXAMPLES, evaluation, starts[:-1], ends, version_2=True)
    with pytest.raises(ConfigError, match="must cover every token"):
        postprocess_predictions(EXAMPLES, evaluation, [s[:-1] for s in starts], ends, version_2=True)


# ---------------------------------------------------------------- round trip


def test_oracle_logits_round_trip_through_datasets_map(tiny_tokenizer) -> None:
    dataset = Dataset.from_list(EXAMPLES)
    kwargs = {"tokenizer": tiny_tokenizer, "max_length": MAX_LENGTH, "doc_stride": STRIDE}
    train = dataset.map(
        prepare_train_features, batched=True, remove_columns=dataset.column_names, fn_kwargs=kwargs
    )
    evaluation = dataset.map(
        prepare_eval_features, batched=True, remove_columns=dataset.column_names, fn_kwargs=kwargs
    )
    assert train["input_ids"] == evaluation["input_ids"]
    starts, ends = [], []
    for ids, s, e in zip(train["input_ids"], train["start_positions"], train["end_positions"], strict=True):
        start, end = np.full(len(ids), -5.0), np.full(len(ids), -5.0)
        start[s], end[e] = 5.0, 5.0  # the labels, as a perfect model would score them
        starts.append(start)
        ends.append(end)
    v1 = postprocess_predictions(dataset, evaluation, starts, ends, version_2=False)
    assert {qid: v1.predictions[qid] for qid in ANSWERABLE} == ANSWERABLE
    v2 = postprocess_predictions(dataset, evaluation, starts, ends, version_2=True)
    assert v2.predictions == {**ANSWERABLE, "none": ""}

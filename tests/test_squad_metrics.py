"""SQuAD v1.1 / v2.0 scoring: hand-worked cases, the official scripts' quirks, real dev data.

Every expected number below was worked out by hand from the definitions of the official
evaluate-v1.1.py / evaluate-v2.0.py (the fraction is written next to it), not produced by
running the code under test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from roberta_lora.errors import ConfigError, DataError
from roberta_lora.evaluation.squad_metrics import (
    exact_match_score,
    examples_to_squad_dataset,
    f1_score,
    load_squad_json_for_scoring,
    normalize_answer,
    squad_v1_metrics,
    squad_v2_metrics,
)


def _qa(qid: str, *golds: str) -> dict:
    return {"id": qid, "question": f"q {qid}?", "answers": [{"text": g, "answer_start": 0} for g in golds]}


def _data(*paragraph_qas: list[dict]) -> list[dict]:
    """One article per argument, each with a single paragraph holding those questions."""
    return [
        {"title": f"t{i}", "paragraphs": [{"context": "ctx", "qas": qas}]}
        for i, qas in enumerate(paragraph_qas)
    ]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The Cat!", "cat"),
        ("  A  quick,\tbrown  fox. ", "quick brown fox"),
        ("an apple an", "apple"),
        ("The-End", "theend"),  # punctuation goes first, so "the" is no longer a word
        ("anthem, theatre", "anthem theatre"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("Théâtre", "théâtre"),  # non-ASCII letters stay
        ("a\u2013b", "\u2013b"),  # en dash is not ASCII punctuation but is a word boundary
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_partial_overlap_f1_worked_by_hand() -> None:
    # pred [quick brown fox], gold [quick brown dog jumps]: 2 shared, P = 2/3, R = 1/2
    assert f1_score("the quick brown fox", "Quick brown dog jumps") == pytest.approx(4 / 7)
    # repeated tokens are matched as multisets: {x:2, y:1} & {x:1, y:2} = 2 shared
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score("nothing shared", "at all") == 0.0
    assert exact_match_score("The Denver Broncos!", "denver broncos") == 1


def test_empty_answers_follow_each_versions_rule() -> None:
    # v1.1: no shared token -> 0, even when both normalise to nothing; EM still says 1
    assert f1_score("the", "a") == 0.0
    assert exact_match_score("the", "a") == 1
    # v2.0: F1 is 1 when both sides are empty, 0 when only one is
    assert f1_score("the", "a", squad_v2=True) == 1.0
    assert f1_score("", "cat", squad_v2=True) == 0.0
    assert f1_score("cat", "", squad_v2=True) == 0.0


def test_v1_max_over_golds_and_missing_prediction(caplog: pytest.LogCaptureFixture) -> None:
    dataset = _data(
        [_qa("q1", "Denver Broncos", "The Denver Broncos", "Broncos")],
        [_qa("q2", "quick brown dog jumps", "lazy fox"), _qa("q3", "1912")],
    )
    preds = {"q1": "denver broncos!", "q2": "the quick brown fox", "unknown": "ignored"}
    with caplog.at_level(logging.WARNING, logger="roberta_lora.evaluation.squad_metrics"):
        result = squad_v1_metrics(dataset, preds)
    # q1: EM 1, F1 1; q2: EM 0, F1 max(4/7, 2/5) = 4/7; q3: missing -> 0, still counted
    assert result == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(100 * (1 + 4 / 7) / 3)}
    assert "q3" in caplog.text and "score 0" in caplog.text


def test_v1_refuses_questions_without_gold_and_empty_datasets() -> None:
    with pytest.raises(DataError, match="squad_v2_metrics"):
        squad_v1_metrics(_data([_qa("q1")]), {"q1": ""})
    with pytest.raises(DataError, match="no questions"):
        squad_v1_metrics([], {})


# Dataset order: h1, n1 | h2, h3, n2, h4. h4's only gold ("The") normalises to empty, so it
# is scored against [""] yet counted as HasAns (the raw answers list is not empty).
V2_DATA = _data(
    [_qa("h1", "Paris"), _qa("n1")],
    [_qa("h2", "the big red barn"), _qa("h3", "1912"), _qa("n2"), _qa("h4", "The")],
)
V2_PREDS = {"h1": "Paris", "n1": "", "h2": "red barn door", "h3": "", "n2": "something", "h4": ""}
# raw exact: h1 1, n1 1, h2 0, h3 0, n2 0, h4 1; raw F1: the same except h2 = 2/3
V2_PROBS = {"h1": 0.1, "n1": 0.9, "h2": 0.4, "h3": 0.6, "n2": 0.8, "h4": 0.2}

V2_CASES = {
    "no na_probs": (
        None,
        1.0,
        {
            "exact": 100 * 3 / 6,
            "f1": 100 * (3 + 2 / 3) / 6,
            "total": 6,
            "HasAns_exact": 100 * 2 / 4,
            "HasAns_f1": 100 * (2 + 2 / 3) / 4,
            "HasAns_total": 4,
            "NoAns_exact": 100 * 1 / 2,
            "NoAns_f1": 100 * 1 / 2,
            "NoAns_total": 2,
        },
    ),
    # threshold 0.5 turns n1, h3, n2 into "no answer": n2 becomes right (1), h3 stays 0.
    # best walk (start 2 = #NoAns): h1 +1 -> 3 @0.1, h4 +1 -> 4 @0.2, h2 +0 / +2/3 @0.4,
    # h3 +0, n2 -1 (non-empty prediction), n1 +0.
    "na_probs, threshold 0.5": (
        V2_PROBS,
        0.5,
        {
            "exact": 100 * 4 / 6,
            "f1": 100 * (4 + 2 / 3) / 6,
            "total": 6,
            "HasAns_exact": 100 * 2 / 4,
            "HasAns_f1": 100 * (2 + 2 / 3) / 4,
            "HasAns_total": 4,
            "NoAns_exact": 100.0,
            "NoAns_f1": 100.0,
            "NoAns_total": 2,
            "best_exact": 100 * 4 / 6,
            "best_exact_thresh": 0.2,
            "best_f1": 100 * (4 + 2 / 3) / 6,
            "best_f1_thresh": 0.4,
        },
    ),
    # the default threshold 1.0 changes nothing, but the best_* keys appear
    "na_probs, default threshold": (
        V2_PROBS,
        1.0,
        {
            "exact": 50.0,
            "f1": 100 * (3 + 2 / 3) / 6,
            "total": 6,
            "HasAns_exact": 50.0,
            "HasAns_f1": 100 * (2 + 2 / 3) / 4,
            "HasAns_total": 4,
            "NoAns_exact": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2,
            "best_exact": 100 * 4 / 6,
            "best_exact_thresh": 0.2,
            "best_f1": 100 * (4 + 2 / 3) / 6,
            "best_f1_thresh": 0.4,
        },
    ),
}


@pytest.mark.parametrize("case", list(V2_CASES))
def test_v2_reference_table(case: str) -> None:
    na_probs, thresh, expected = V2_CASES[case]
    result = squad_v2_metrics(V2_DATA, V2_PREDS, na_probs=na_probs, na_prob_thresh=thresh)
    assert list(result) == list(expected)  # the key order the official script prints
    assert result == {key: pytest.approx(value, abs=1e-12) for key, value in expected.items()}
    assert type(result["total"]) is int


def test_v2_best_threshold_walks_ties_in_na_probs_order() -> None:
    # h right (+1), n answered though unanswerable (-1), both na_prob 0.5. The official walk
    # compares after each question, so "h first" reports 2/2 at 0.5: a score no threshold
    # reaches (at 0.5 both are answered: 1/2). "n first" never beats the start of 1.
    dataset = _data([_qa("h", "yes"), _qa("n")])
    preds = {"h": "yes", "n": "maybe"}
    h_first = squad_v2_metrics(dataset, preds, na_probs={"h": 0.5, "n": 0.5})
    n_first = squad_v2_metrics(dataset, preds, na_probs={"n": 0.5, "h": 0.5})
    assert (h_first["best_exact"], h_first["best_exact_thresh"]) == (100.0, 0.5)
    assert (n_first["best_exact"], n_first["best_exact_thresh"]) == (50.0, 0.0)


def test_v2_best_threshold_counts_whitespace_prediction_as_an_answer() -> None:
    # n's prediction "  " normalises to "" (raw exact 1) but is a non-empty string, so the
    # best-threshold walk takes a point off: start 1, n -> 0 @0.3, h -> 1 @0.6, never > 1.
    dataset = _data([_qa("h", "yes"), _qa("n")])
    result = squad_v2_metrics(dataset, {"h": "yes", "n": "  "}, na_probs={"n": 0.3, "h": 0.6})
    assert result["exact"] == 100.0
    assert (result["best_exact"], result["best_exact_thresh"]) == (50.0, 0.0)


def test_v2_without_unanswerable_questions_has_no_noans_keys() -> None:
    result = squad_v2_metrics(_data([_qa("a", "x y"), _qa("b", "z")]), {"a": "x", "b": ""})
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]
    assert result["f1"] == pytest.approx(100 * (2 / 3) / 2)  # P = 1, R = 1/2


def test_v2_missing_predictions_or_na_probs_are_errors() -> None:
    with pytest.raises(ConfigError, match="1 question.*n1"):
        squad_v2_metrics(V2_DATA, {k: v for k, v in V2_PREDS.items() if k != "n1"})
    with pytest.raises(ConfigError, match="na_probs has no value.*h4"):
        squad_v2_metrics(V2_DATA, V2_PREDS, na_probs={k: v for k, v in V2_PROBS.items() if k != "h4"})


def test_load_squad_json_for_scoring(tmp_path: Path) -> None:
    good = tmp_path / "dev.json"
    good.write_text(json.dumps({"version": "v2.0", "data": V2_DATA}))
    assert load_squad_json_for_scoring(good) == V2_DATA
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{\n  oops")
    with pytest.raises(DataError, match=r"bad\.json:2: not valid JSON"):
        load_squad_json_for_scoring(bad_json)
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(V2_PREDS))
    with pytest.raises(DataError, match="predictions.json.*official SQuAD format"):
        load_squad_json_for_scoring(predictions)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"data": [{"paragraphs": [{"qas": [{"id": "x"}]}]}]}))
    with pytest.raises(DataError, match='article 0.*"answers"'):
        load_squad_json_for_scoring(nested)
    with pytest.raises(DataError, match="cannot read"):
        load_squad_json_for_scoring(tmp_path / "absent.json")


def _hf_rows(dataset: list[dict]) -> list[dict]:
    """The official nesting flattened into Hugging Face `squad` rows."""
    return [
        {
            "id": qa["id"],
            "title": article["title"],
            "context": paragraph["context"],
            "question": qa["question"],
            "answers": {
                "text": [a["text"] for a in qa["answers"]],
                "answer_start": [a["answer_start"] for a in qa["answers"]],
            },
        }
        for article in dataset
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


def test_examples_to_squad_dataset_round_trips() -> None:
    assert examples_to_squad_dataset(_hf_rows(V2_DATA)) == V2_DATA
    with pytest.raises(DataError, match="row 0 lacks"):
        examples_to_squad_dataset([{"id": "x", "answers": {"text": []}}])
    row = _hf_rows(V2_DATA)[0] | {"answers": {"text": ["a", "b"], "answer_start": [0]}}
    with pytest.raises(DataError, match="2 answer texts but 1"):
        examples_to_squad_dataset([row])


def _plain_token_count(text: str) -> int | None:
    """Token count after normalisation for plain ASCII words only (None otherwise).

    Independent of normalize_answer: for letters, digits and spaces the official
    normalisation is just lowercasing and dropping the words a/an/the.
    """
    if not text or not all(ch.isascii() and (ch.isalnum() or ch == " ") for ch in text):
        return None
    return sum(1 for word in text.lower().split() if word not in {"a", "an", "the"})


def test_official_dev_v11_gold_answers_and_a_perturbed_set(shared_data: Path) -> None:
    dataset = load_squad_json_for_scoring(shared_data / "squad" / "dev-v1.1.json")
    questions = [qa for article in dataset for p in article["paragraphs"] for qa in p["qas"]]
    assert len(questions) == 10570
    gold = {qa["id"]: qa["answers"][0]["text"] for qa in questions}
    assert squad_v1_metrics(dataset, gold) == {"exact_match": 100.0, "f1": 100.0}
    v2 = squad_v2_metrics(dataset, gold)
    assert (v2["exact"], v2["f1"], v2["HasAns_total"], "NoAns_total" in v2) == (100.0, 100.0, 10570, False)
    assert examples_to_squad_dataset(_hf_rows(dataset)) == [
        {"title": a["title"], "paragraphs": a["paragraphs"]} for a in dataset
    ]

    # Every 10th question gets a token no gold contains (EM = F1 = 0). Every 7th with a
    # plain-word first gold of n tokens gets that token appended: EM 0, and F1 = 2n/(2n+1)
    # (P = n/(n+1), R = 1 against that gold; no other gold can share more than n tokens).
    perturbed, wrong, extra_f1 = dict(gold), 0, []
    for number, qa in enumerate(questions):
        n = _plain_token_count(gold[qa["id"]])
        if number % 10 == 0:
            perturbed[qa["id"]], wrong = "zzqxj", wrong + 1
        elif number % 7 == 0 and n:
            perturbed[qa["id"]] = gold[qa["id"]] + " zzqxj"
            extra_f1.append(2 * n / (2 * n + 1))
    total = len(questions)
    expected_em = 100 * (total - wrong - len(extra_f1)) / total
    expected_f1 = 100 * (total - wrong - len(extra_f1) + sum(extra_f1)) / total
    assert wrong == 1057 and len(extra_f1) > 500
    v1 = squad_v1_metrics(dataset, perturbed)
    assert v1 == {
        "exact_match": pytest.approx(expected_em, abs=1e-9),
        "f1": pytest.approx(expected_f1, abs=1e-9),
    }
    v2 = squad_v2_metrics(dataset, perturbed)
    assert (v2["exact"], v2["f1"]) == pytest.approx((v1["exact_match"], v1["f1"]), abs=1e-9)

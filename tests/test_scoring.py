"""`roberta-lora score` and `data-info`: official input formats, same numbers, clear errors."""

from __future__ import annotations

import json

import pytest

from roberta_lora.cli.main import main
from roberta_lora.data.tasks import load_task
from roberta_lora.errors import DataError
from roberta_lora.evaluation.scoring import score_predictions

from fixtures_glue import squad_document, write_glue_fixture, write_squad_fixture


def gold_answers(document: dict) -> dict[str, str]:
    return {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "")
            for article in document["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]}


def test_squad_v1_score_from_official_files(tmp_path, capsys) -> None:
    data = write_squad_fixture(tmp_path / "dev-v1.1.json", version=1)
    predictions = gold_answers(squad_document(1))
    first, second = sorted(predictions)[:2]
    predictions[first] = "the " + predictions[first] + "!"  # normalises to the gold text: still exact
    predictions[second] = "nothing like it"  # no overlap: 0 / 0
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(predictions))
    assert main(["score", "--task", "squad_v1", "--data", str(data), "--predictions", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    total = len(predictions)
    assert result == {"exact_match": pytest.approx(100 * (total - 1) / total), "f1": pytest.approx(100 * (total - 1) / total)}


def test_squad_v2_score_with_na_probs(tmp_path) -> None:
    document = squad_document(2)
    data = tmp_path / "dev-v2.0.json"
    data.write_text(json.dumps(document))
    predictions = gold_answers(document)
    answerable = [q for q, a in predictions.items() if a]
    unanswerable = [q for q, a in predictions.items() if not a]
    predictions[unanswerable[0]] = "a wrong guess"
    na_probs = {q: 0.9 if q in unanswerable else 0.1 for q in predictions}
    (tmp_path / "p.json").write_text(json.dumps(predictions))
    (tmp_path / "na.json").write_text(json.dumps(na_probs))
    result = score_predictions(load_task("squad_v2"), data, tmp_path / "p.json", tmp_path / "na.json")
    n = len(predictions)
    assert result["HasAns_exact"] == 100.0 and result["HasAns_total"] == len(answerable)
    assert result["NoAns_exact"] == pytest.approx(100 * (len(unanswerable) - 1) / len(unanswerable))
    assert result["exact"] == pytest.approx(100 * (n - 1) / n)
    # Thresholding at 0.5 turns the wrong guess into "no answer": everything right.
    assert result["best_exact"] == 100.0 and 0.1 <= result["best_exact_thresh"] < 0.9


def test_glue_tsv_predictions_by_label_name(tmp_path) -> None:
    write_glue_fixture(tmp_path, "rte", n_train=4, n_dev=6)
    names = ["entailment", "not_entailment"]
    rows = [f"{i}\t{names[i % 2]}" for i in range(6)]  # fixture row i has class i % 2: all right
    (tmp_path / "pred.tsv").write_text("index\tprediction\n" + "\n".join(rows) + "\n")
    assert score_predictions(load_task("rte"), tmp_path, tmp_path / "pred.tsv") == {"accuracy": 1.0}


@pytest.mark.parametrize("content, message", [
    ('{"index": 0, "prediction": 1}\n{"index": 0, "prediction": 1}\n', r"pred.jsonl:2: index 0 is predicted twice"),
    ('{"index": 0, "prediction": 1}\n', r"5 of 6 rows have no prediction"),
    ('{"index": 9, "prediction": 1}\n', r"pred.jsonl:1: index 9 is outside"),
    ('{"index": 0, "prediction": "maybe"}\n', r"pred.jsonl:1: prediction 'maybe' is not a label of rte"),
    ('not json\n', r"pred.jsonl:1: not valid JSON"),
])
def test_glue_prediction_errors_name_file_and_line(tmp_path, content, message) -> None:
    write_glue_fixture(tmp_path, "rte", n_train=4, n_dev=6)
    (tmp_path / "pred.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        score_predictions(load_task("rte"), tmp_path, tmp_path / "pred.jsonl")


def test_data_info_command(tmp_path, capsys) -> None:
    write_glue_fixture(tmp_path, "mnli", n_train=9, n_dev=6)
    assert main(["data-info", "--task", "mnli", "--data-dir", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"]["rows"] == 9
    assert info["splits"]["train"]["labels"] == {"entailment": 3, "neutral": 3, "contradiction": 3}
    assert set(info["splits"]) == {"train", "validation_matched", "validation_mismatched"}


def test_shared_squad_gold_scores_100_through_the_cli(shared_data, tmp_path, capsys) -> None:
    document = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text())
    (tmp_path / "p.json").write_text(json.dumps(gold_answers(document)))
    assert main(["score", "--task", "squad_v1", "--data", str(shared_data / "squad" / "dev-v1.1.json"),
                 "--predictions", str(tmp_path / "p.json")]) == 0
    assert json.loads(capsys.readouterr().out) == {"exact_match": 100.0, "f1": 100.0}

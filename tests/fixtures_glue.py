"""Write small data files in the exact layouts of the original GLUE and SQuAD releases.

Tests (and the lead's end-to-end tests) call these instead of needing ../shared/data:
`write_glue_fixture(tmp_path, "mrpc")` writes `tmp_path/MRPC/train.tsv` and `dev.tsv` with
the real quirks (BOM header, literal quotes, CoLA without header, STS-B's 10 columns,
MNLI's parse columns); `tmp_path` is then a valid `data_dir`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

TASK_DIRS = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
    "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
}

# Varied sentences; the quotes are literal text in GLUE files (never CSV quoting).
SENTENCES = [
    "The movie was a great and moving experience.",
    'He said "the witness" lied, and nobody believed him.',
    '"The foodservice pie business does not fit our strategy.',
    "A boring, terrible film with bad acting .",
    "The cat sat on the mat while the dog slept.",
    "Who wrote the book? The author wrote it in 1990 in Paris.",
    "It's 3.5 degrees colder today than yesterday, isn't it?",
    "Normandy is a region in France; the Normans gave their name to it.",
    "How many people live in the city of Denver, Colorado?",
    "Two sentences can be paraphrases of each other, or not.",
    "She didn't say 'maybe' -- she said no.",
    "Is the second sentence entailed by the first one?",
]

MNLI_LABELS = ("entailment", "neutral", "contradiction")
NLI_LABELS = ("entailment", "not_entailment")


def sentence(i: int) -> str:
    """A deterministic example text; differs for every i."""
    return f"{SENTENCES[i % len(SENTENCES)]} (example {i})"


def write_tsv(path: Path, header: Sequence[str] | None, rows: Sequence[Sequence[object]], bom: bool = False) -> Path:
    """Write tab-separated rows exactly as given (no quoting), with "\\n" line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header is not None else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def glue_rows(task: str, n: int, split: str = "train") -> tuple[list[str] | None, list[list[object]], bool]:
    """(header or None, rows, BOM?) for `n` rows of `task` in its original layout.

    Labels cycle through the classes (ids 0, 1, ... in hub order), so counts are predictable:
    row i has class i % num_classes; STS-B row i has score (i % 11) * 0.5.
    """
    s1 = [sentence(i) for i in range(n)]
    s2 = [sentence(i + 5) for i in range(n)]
    if task == "cola":
        return None, [["gj04", i % 2, "" if i % 2 else "*", s1[i]] for i in range(n)], False
    if task == "sst2":
        return ["sentence", "label"], [[s1[i].lower() + " ", i % 2] for i in range(n)], False
    if task == "mrpc":
        header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
        return header, [[i % 2, 1000 + i, 2000 + i, s1[i], s2[i]] for i in range(n)], True
    if task == "stsb":
        header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
        rows = [[i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", s1[i], s2[i], f"{(i % 11) * 0.5:.3f}"]
                for i in range(n)]
        return header, rows, False
    if task == "qqp":
        header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
        return header, [[i, 2 * i + 1, 2 * i + 2, s1[i], s2[i], i % 2] for i in range(n)], False
    if task == "mnli":
        parse = ["( ( The cat ) sat )", "( ( A dog ) slept )", "(ROOT (S (NP (DT The) (NN cat))))", "(ROOT (S (NP (DT A) (NN dog))))"]
        header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                  "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
        annotators = ["label1"] if split == "train" else ["label1", "label2", "label3", "label4", "label5"]
        rows = [[i, 100 + i, f"{100 + i}e", "fiction", *parse, s1[i], s2[i],
                 *[MNLI_LABELS[i % 3]] * len(annotators), MNLI_LABELS[i % 3]] for i in range(n)]
        return header + annotators + ["gold_label"], rows, False
    if task == "qnli":
        return ["index", "question", "sentence", "label"], [[i, s1[i], s2[i], NLI_LABELS[i % 2]] for i in range(n)], False
    if task == "rte":
        return ["index", "sentence1", "sentence2", "label"], [[i, s1[i], s2[i], NLI_LABELS[i % 2]] for i in range(n)], False
    if task == "wnli":
        return ["index", "sentence1", "sentence2", "label"], [[i, s1[i], s2[i], i % 2] for i in range(n)], False
    raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(TASK_DIRS)}")


def write_glue_fixture(root: Path, task: str, n_train: int = 24, n_dev: int = 12) -> Path:
    """Write `<root>/<TASK_DIR>/train.tsv` and the dev file(s); return the task folder.

    MNLI gets dev_matched.tsv and dev_mismatched.tsv (n_dev rows each).
    """
    folder = Path(root) / TASK_DIRS[task]
    dev_names = ["dev_matched.tsv", "dev_mismatched.tsv"] if task == "mnli" else ["dev.tsv"]
    for name, n, split in [("train.tsv", n_train, "train")] + [(d, n_dev, "dev") for d in dev_names]:
        header, rows, bom = glue_rows(task, n, split)
        write_tsv(folder / name, header, rows, bom=bom)
    return folder


def squad_document(version: int = 1, n_articles: int = 2, n_paragraphs: int = 2, n_questions: int = 3,
                   split: str = "") -> dict:
    """An official-format SQuAD document whose answers sit at their answer_start.

    In v2 every third question is unanswerable (is_impossible, answers [], plausible_answers). `split`
    goes into the article titles, so a train and a dev file are not byte-identical (the toolkit refuses
    one file's data used as two splits).
    """
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(n_paragraphs):
            context = " ".join(sentence(a * 10 + p * 3 + k) for k in range(3))
            qas = []
            for q in range(n_questions):
                qid = f"q{a}_{p}_{q}"
                answer = sentence(a * 10 + p * 3 + q % 3)[:12]
                entry = {"answers": [{"answer_start": context.index(answer), "text": answer}],
                         "question": f"Question {q} about paragraph {p}?", "id": qid}
                if version == 2:
                    entry["is_impossible"] = q % 3 == 2
                    if entry["is_impossible"]:
                        entry["plausible_answers"], entry["answers"] = entry["answers"], []
                qas.append(entry)
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"Article_{a}{'_' + split if split else ''}", "paragraphs": paragraphs})
    return {"version": "1.1" if version == 1 else "v2.0", "data": data}


def write_squad_fixture(path: Path, version: int = 1, n_articles: int = 2, n_paragraphs: int = 2,
                        n_questions: int = 3) -> Path:
    """Write `squad_document(...)` as JSON to `path` (parents created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = squad_document(version, n_articles, n_paragraphs, n_questions, split=path.stem)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path

"""The table of bad inputs for test_bad_inputs.py: what a real user gets wrong, one row each.

A `Case` is a command line (templates: `{ws}` is the case's own workspace, `{model}`, `{glue}`,
`{adapter_sst2}`, ... are fresh copies of the module's fixtures inside it, copied on first use,
`{tpl_model}` / `{tpl_glue}` the read-only originals), an optional `setup(ws)` that writes the bad
files into the workspace, and the substrings of which at least one must appear on stderr (the
offending file, flag or value). `may_write` lists the workspace paths where the command may
legitimately leave new files (the tokenization cache always; a fresh run folder for `train`).

Every case must end with a non-zero exit, no "Traceback", a short stderr naming what is wrong,
and every file that existed before byte-identical afterwards.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures_glue import glue_rows, squad_document, write_glue_fixture, write_tsv

REPO = Path(__file__).resolve().parents[2]


class SkipCase(Exception):
    """The case cannot be set up here (e.g. running as root makes a chmod 0o500 folder writable)."""


# ----------------------------------------------------------------------------- workspace
class Workspace:
    """One case's folder. `fixture(name)` copies the module fixture `name` into it on first use."""

    # Fixture folders whose copies get a distinctive name, so that a message naming them is recognisable.
    ALIASES = {"model": "tiny_base", "other_model": "other_base"}

    def __init__(self, root: Path, templates: dict[str, Path]) -> None:
        self.root = root
        self.templates = templates
        self.copied: dict[str, Path] = {}

    def fixture(self, name: str, as_name: str | None = None) -> Path:
        """A private copy of fixture `name` at `<ws>/<as_name or name>` (symlinks kept as links)."""
        dest = self.root / (as_name or self.ALIASES.get(name, name))
        key = f"{name}->{dest}"
        if key not in self.copied:
            source = self.templates[name]
            if source.is_dir():
                shutil.copytree(source, dest, symlinks=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)
            self.copied[key] = dest
        return self.copied[key]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def write(self, relative: str, content: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def format(self, template: str) -> str:
        return template.format_map(_Lookup(self))


class _Lookup(dict):
    def __init__(self, ws: Workspace) -> None:
        super().__init__()
        self.ws = ws

    def __missing__(self, key: str) -> str:
        if key == "ws":
            return str(self.ws.root)
        if key.startswith("tpl_"):
            return str(self.ws.templates[key.removeprefix("tpl_")])
        return str(self.ws.fixture(key))


# ----------------------------------------------------------------------------- the case type
@dataclass(frozen=True)
class Case:
    id: str
    category: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # at least one must appear on stderr (after template formatting)
    setup: Callable[[Workspace], Any] | None = None
    may_write: tuple[str, ...] = ("cache",)  # workspace-relative paths where new files may appear
    cwd: str = "."  # workspace-relative working directory
    note: str = ""


CASES: list[Case] = []


def case(id: str, category: str, argv: Sequence[str], expect: str | Sequence[str], setup=None,
         may_write: Sequence[str] = ("cache",), cwd: str = ".", note: str = "") -> None:
    assert all((c.category, c.id) != (category, id) for c in CASES), f"duplicate case id {category}:{id}"
    expect = (expect,) if isinstance(expect, str) else tuple(expect)
    CASES.append(Case(id, category, tuple(argv), expect, setup, tuple(may_write), cwd, note))


# ----------------------------------------------------------------------------- command builders
def train(*flags: str, task: str = "sst2", data: str | None = "{glue}", model: str | None = "{model}",
          out: str | None = "{ws}/run", short: bool = True) -> list[str]:
    """`train` with the fixtures; `short` adds one epoch on a few examples (flags given later win)."""
    argv = ["train", "--task", task, "--no-progress", "--cache-dir", "{ws}/cache"]
    argv += ["--model", model] if model is not None else []
    argv += ["--data-dir", data] if data is not None else []
    argv += ["--output-dir", out] if out is not None else []
    if short:
        argv += ["--epochs", "1", "--batch-size", "8", "--max-train-samples", "16", "--max-eval-samples", "8"]
    return argv + list(flags)


TRAIN_WRITES = ("cache", "run")  # a fresh --output-dir {ws}/run is where a train run writes


def T(id: str, category: str, argv: Sequence[str], expect, setup=None, **kw: Any) -> None:
    """A `train` case: may leave files in its fresh run folder {ws}/run (and the cache)."""
    kw.setdefault("may_write", TRAIN_WRITES)
    case(id, category, argv, expect, setup, **kw)


# ----------------------------------------------------------------------------- file helpers
def glue_bad(task: str, mutate: Callable[[list | None, list], Any] | None = None, split: str = "train",
             root: str = "bad", raw: bytes | None = None) -> Callable[[Workspace], None]:
    """Setup: a valid GLUE fixture for `task` under <ws>/<root>, then the `split` file rewritten.

    `mutate(header, rows)` returns (header, rows) or the file's bytes; `raw` replaces the file outright.
    """
    def setup(ws: Workspace) -> None:
        folder = write_glue_fixture(ws.path(root), task)
        name = "train.tsv" if split == "train" else ("dev_matched.tsv" if task == "mnli" else "dev.tsv")
        path = folder / name
        if raw is not None:
            path.write_bytes(raw)
            return
        header, rows, bom = glue_rows(task, 24 if split == "train" else 12, "train" if split == "train" else "dev")
        result = mutate(header, rows) if mutate else (header, rows)
        if isinstance(result, bytes):
            path.write_bytes(result)
        else:
            write_tsv(path, result[0], result[1], bom=bom)
    return setup


def set_cell(row: int, col: int, value: object) -> Callable[[list | None, list], tuple]:
    def mutate(header, rows):
        rows[row][col] = value
        return header, rows
    return mutate


def drop_column(name: str) -> Callable[[list | None, list], tuple]:
    def mutate(header, rows):
        i = header.index(name)
        return [h for j, h in enumerate(header) if j != i], [[c for j, c in enumerate(r) if j != i] for r in rows]
    return mutate


def tsv_bytes(header, rows, encoding: str = "utf-8", bom: bool = False) -> bytes:
    lines = (["\t".join(header)] if header is not None else []) + ["\t".join(map(str, r)) for r in rows]
    text = ("\ufeff" if bom else "") + "\n".join(lines) + "\n"
    return text.encode(encoding)


def squad_bad(mutate: Callable[[dict], Any] | None, version: int = 1, split: str = "train", root: str = "bads",
              raw: bytes | None = None, drop: str | None = None) -> Callable[[Workspace], None]:
    """Setup: <ws>/<root>/squad/{train,dev}-v1.1.json (or v2.0), then one file broken.

    `mutate(doc)` edits the document in place (or returns bytes); `raw` replaces the file; `drop`
    deletes that split's file.
    """
    def setup(ws: Workspace) -> None:
        suffix = "v1.1" if version == 1 else "v2.0"
        for name in ("train", "dev"):
            ws.write(f"{root}/squad/{name}-{suffix}.json", json.dumps(squad_document(version, split=name)))
        path = ws.path(f"{root}/squad/{split}-{suffix}.json")
        if drop:
            ws.path(f"{root}/squad/{drop}-{suffix}.json").unlink()
            return
        if raw is not None:
            path.write_bytes(raw)
            return
        doc = squad_document(version)
        result = mutate(doc) if mutate else None
        path.write_bytes(result if isinstance(result, bytes) else json.dumps(doc).encode())
    return setup


def first_qa(doc: dict) -> dict:
    return doc["data"][0]["paragraphs"][0]["qas"][0]


def chmod(path: Path, mode: int, need: str) -> None:
    """chmod `path`, or skip the case when this user can still `need` ("r"/"w") it (root)."""
    path.chmod(mode)
    flag = os.W_OK if need == "w" else os.R_OK
    if os.access(path, flag):
        path.chmod(stat.S_IRWXU)
        raise SkipCase(f"{path} stays {'writable' if need == 'w' else 'readable'} after chmod {oct(mode)} (root?)")


def notes_dir(ws: Workspace, name: str = "notes_dir") -> Path:
    """An existing folder that is not a run: a user's notes."""
    ws.write(f"{name}/notes.md", "# experiment notes\nsst2 lr sweep: 5e-4 best so far\n")
    ws.write(f"{name}/todo.txt", "try rank 16\n")
    return ws.path(name)


def project_dir(ws: Workspace) -> Path:
    """The folder a user runs the command from: a project with code and notes."""
    ws.write("project_dir/README.md", "# my project\n")
    ws.write("project_dir/analysis.py", "print('hello')\n")
    ws.write("project_dir/.git/HEAD", "ref: refs/heads/main\n")
    return ws.path("project_dir")


def write_toml(name: str, text: str | bytes) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        ws.write(name, ws.format(text) if isinstance(text, str) else text)
    return setup


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def all_of(*setups: Callable[[Workspace], Any]) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        for s in setups:
            s(ws)
    return setup


# ============================================================================= GLUE data
def _glue_cases() -> None:
    C = "glue_data"

    def t(id, task, setup, expect, **kw):
        T(id, C, train(task=task, data="{ws}/bad"), expect, setup, **kw)

    sst2 = "SST-2/train.tsv"
    t("sst2-missing-label-column", "sst2", glue_bad("sst2", drop_column("label")), sst2)
    t("sst2-renamed-columns", "sst2", glue_bad("sst2", lambda h, r: (["text", "target"], r)), sst2)
    t("sst2-label-2", "sst2", glue_bad("sst2", set_cell(3, 1, 2)), sst2)
    t("sst2-label-word", "sst2", glue_bad("sst2", set_cell(3, 1, "positive ")), sst2)
    t("sst2-label-empty", "sst2", glue_bad("sst2", set_cell(3, 1, "")), sst2)
    t("sst2-label-float", "sst2", glue_bad("sst2", set_cell(3, 1, "0.7")), sst2)
    t("sst2-empty-sentence", "sst2", glue_bad("sst2", set_cell(3, 0, "")), sst2)
    t("sst2-blank-sentence", "sst2", glue_bad("sst2", set_cell(3, 0, "   ")), sst2)
    t("sst2-latin1-bytes", "sst2",
      glue_bad("sst2", lambda h, r: tsv_bytes(h, [[f"caf\u00e9 number {i}", i % 2] for i in range(24)], "latin-1")), sst2)
    t("sst2-utf16", "sst2", glue_bad("sst2", lambda h, r: tsv_bytes(h, r, "utf-16")), sst2)
    t("sst2-empty-file", "sst2", glue_bad("sst2", raw=b""), sst2)
    t("sst2-header-only", "sst2", glue_bad("sst2", raw=b"sentence\tlabel\n"), sst2)
    t("sst2-gzip-bytes", "sst2", glue_bad("sst2", lambda h, r: gzip.compress(tsv_bytes(h, r))), sst2)
    t("sst2-nul-byte", "sst2", glue_bad("sst2", set_cell(3, 0, "a good\x00 film")), sst2)
    t("sst2-extra-column", "sst2", glue_bad("sst2", lambda h, r: (h, r[:3] + [r[3] + ["extra"]] + r[4:])), sst2)
    t("sst2-missing-field", "sst2", glue_bad("sst2", lambda h, r: (h, r[:3] + [[r[3][0]]] + r[4:])), sst2)
    t("sst2-comma-separated", "sst2",
      glue_bad("sst2", lambda h, r: ("sentence,label\n" + "".join(f"{s.strip()},{lab}\n" for s, lab in r)).encode()), sst2)
    t("sst2-dev-bad-label", "sst2", glue_bad("sst2", set_cell(2, 1, 7), split="dev"), "SST-2/dev.tsv")
    t("sst2-dev-empty-file", "sst2", glue_bad("sst2", raw=b"", split="dev"), "SST-2/dev.tsv")

    def train_is_dir(ws):
        glue_bad("sst2")(ws)
        path = ws.path("bad/SST-2/train.tsv")
        path.unlink()
        path.mkdir()
        (path / "part-0.tsv").write_text("sentence\tlabel\nok\t1\n")
    t("sst2-train-is-directory", "sst2", train_is_dir, sst2)

    def dev_missing(ws):
        glue_bad("sst2")(ws)
        ws.path("bad/SST-2/dev.tsv").unlink()
    t("sst2-dev-missing", "sst2", dev_missing, "SST-2/dev.tsv")

    def broken_link(ws):
        glue_bad("sst2")(ws)
        path = ws.path("bad/SST-2/train.tsv")
        path.unlink()
        path.symlink_to(ws.path("bad/SST-2/train-full.tsv"))
    t("sst2-broken-symlink", "sst2", broken_link, sst2)

    def unreadable(ws):
        glue_bad("sst2")(ws)
        chmod(ws.path("bad/SST-2/train.tsv"), 0, "r")
    t("sst2-unreadable", "sst2", unreadable, sst2)

    rte = "RTE/train.tsv"
    t("rte-label-maybe", "rte", glue_bad("rte", set_cell(3, 3, "maybe")), rte)
    t("rte-label-id", "rte", glue_bad("rte", set_cell(3, 3, "3")), rte)
    t("rte-missing-sentence2", "rte", glue_bad("rte", drop_column("sentence2")), rte)
    t("rte-empty-sentence2", "rte", glue_bad("rte", set_cell(3, 2, "")), rte)
    t("rte-dev-no-header", "rte", glue_bad("rte", lambda h, r: (None, r), split="dev"), "RTE/dev.tsv")
    t("mrpc-quality-yes", "mrpc", glue_bad("mrpc", set_cell(3, 0, "yes")), "MRPC/train.tsv")
    t("mrpc-missing-string2", "mrpc", glue_bad("mrpc", drop_column("#2 String")), "MRPC/train.tsv")
    t("stsb-score-word", "stsb", glue_bad("stsb", set_cell(3, 9, "high")), "STS-B/train.tsv")
    t("stsb-score-7.5", "stsb", glue_bad("stsb", set_cell(3, 9, "7.5")), "STS-B/train.tsv")
    t("stsb-score-nan", "stsb", glue_bad("stsb", set_cell(3, 9, "nan")), "STS-B/train.tsv")
    t("stsb-score-negative", "stsb", glue_bad("stsb", set_cell(3, 9, "-1")), "STS-B/train.tsv")
    t("cola-three-columns", "cola", glue_bad("cola", lambda h, r: (None, [x[:3] for x in r])), "CoLA/train.tsv")
    t("cola-label-star", "cola", glue_bad("cola", set_cell(3, 1, "*")), "CoLA/train.tsv")
    t("mnli-no-gold-label", "mnli", glue_bad("mnli", drop_column("gold_label")), "MNLI/train.tsv")
    t("mnli-gold-label-typo", "mnli", glue_bad("mnli", set_cell(3, -1, "contradicton")), "MNLI/train.tsv")

    def mnli_mismatched_missing(ws):
        glue_bad("mnli")(ws)
        ws.path("bad/MNLI/dev_mismatched.tsv").unlink()
    t("mnli-dev-mismatched-missing", "mnli", mnli_mismatched_missing, "dev_mismatched.tsv")
    t("wnli-label-2", "wnli", glue_bad("wnli", set_cell(3, 3, 2)), "WNLI/train.tsv")

    # The data folder itself is wrong.
    T("data-dir-missing", C, train(data="{ws}/no_such_data"), ("no_such_data", "--data-dir"))

    def empty_dir(ws):
        ws.path("empty_data").mkdir()
    T("data-dir-empty", C, train(data="{ws}/empty_data"), ("empty_data", "SST-2"), empty_dir)

    def only_rte(ws):
        write_glue_fixture(ws.path("rte_only"), "rte")
    T("data-dir-other-task", C, train(data="{ws}/rte_only"), ("rte_only", "SST-2"), only_rte)


# ============================================================================= SQuAD data
def _squad_cases() -> None:
    C = "squad_data"
    train_file, dev_file = "train-v1.1.json", "dev-v1.1.json"

    def t(id, setup, expect=train_file, task="squad_v1", data="{ws}/bads"):
        T(id, C, train(task=task, data=data), expect, setup)

    t("broken-json", squad_bad(lambda d: json.dumps(d).encode()[:-40]))
    t("top-level-list", squad_bad(lambda d: json.dumps(d["data"]).encode()))
    t("no-data-key", squad_bad(lambda d: json.dumps({"version": "1.1", "articles": d["data"]}).encode()))
    t("answer-not-in-context", squad_bad(lambda d: first_qa(d)["answers"][0].update(text="zebra crossing")))
    t("answer-start-shifted", squad_bad(
        lambda d: first_qa(d)["answers"][0].update(answer_start=first_qa(d)["answers"][0]["answer_start"] + 3)))
    t("answer-start-past-end", squad_bad(lambda d: first_qa(d)["answers"][0].update(answer_start=10**6)))
    t("answer-start-negative", squad_bad(lambda d: first_qa(d)["answers"][0].update(answer_start=-5)))
    t("answer-start-string", squad_bad(lambda d: first_qa(d)["answers"][0].update(answer_start="12")))
    t("answer-text-empty", squad_bad(lambda d: first_qa(d)["answers"][0].update(text="", answer_start=0)))
    t("answers-key-missing", squad_bad(lambda d: first_qa(d).pop("answers")))
    t("answers-empty-in-v1", squad_bad(lambda d: first_qa(d).update(answers=[])))

    def v2_doc(doc):
        return json.dumps(squad_document(2)).encode()
    t("v2-file-given-to-squad_v1", squad_bad(v2_doc))
    t("empty-context", squad_bad(lambda d: d["data"][0]["paragraphs"][0].update(context="")))
    t("empty-question", squad_bad(lambda d: first_qa(d).update(question="  ")))
    t("missing-id", squad_bad(lambda d: first_qa(d).pop("id")))

    def duplicate_ids(doc):
        qas = doc["data"][0]["paragraphs"][0]["qas"]
        qas[1]["id"] = qas[0]["id"]
    t("duplicate-ids", squad_bad(duplicate_ids))
    t("paragraphs-not-list", squad_bad(lambda d: d["data"][0].update(paragraphs={"context": "x"})))
    t("empty-file", squad_bad(None, raw=b""))
    t("latin1-bytes", squad_bad(lambda d: json.dumps(d, ensure_ascii=False).replace("Paris", "Par\u00eds").encode("latin-1")))
    t("dev-missing", squad_bad(None, drop="dev"), dev_file)
    t("dev-broken-json", squad_bad(lambda d: b'{"version": "1.1", "data": [', split="dev"), dev_file)
    t("v2-answerable-without-answers", squad_bad(
        lambda d: first_qa(d).update(answers=[], is_impossible=False), version=2), "train-v2.0.json", task="squad_v2")
    t("v2-impossible-with-answers", squad_bad(
        lambda d: d["data"][0]["paragraphs"][0]["qas"][2].update(answers=[{"text": "The", "answer_start": 0}]),
        version=2), "train-v2.0.json", task="squad_v2")
    t("v2-is-impossible-string", squad_bad(
        lambda d: first_qa(d).update(is_impossible="false"), version=2), "train-v2.0.json", task="squad_v2")

    def jsonl_bad(ws):
        lines = [json.dumps({"id": f"q{i}", "title": "t", "context": "The cat sat on the mat.", "question": "Who sat?",
                             "answers": {"text": ["The cat"], "answer_start": [0]}}) for i in range(6)]
        lines[2] = lines[2][:-10]
        ws.write("squad_single/dev.jsonl", "\n".join(lines) + "\n")
    # A single HF-style file is fine for evaluation (one split); its third line is cut.
    case("evaluate-single-jsonl-bad-line", C, ["evaluate", "--adapter", "{adapter_squad}", "--model", "{model}",
                                                "--data-dir", "{ws}/squad_single/dev.jsonl"], "dev.jsonl", jsonl_bad)
    case("evaluate-v2-file-with-squad_v1-adapter", C, ["evaluate", "--adapter", "{adapter_squad}", "--model", "{model}",
                                                       "--data-dir", "{squad}/squad/dev-v2.0.json"], "dev-v2.0.json")
    t("glue-folder-for-squad", None, ("train-v1.1.json", "squad"), data="{glue}")


# ============================================================================= one file as train and validation
def _same_file_cases() -> None:
    C = "same_file"
    T("data-dir-is-sst2-train-tsv", C, train(data="{glue}/SST-2/train.tsv"), "train.tsv")
    T("data-dir-is-sst2-dev-tsv", C, train(data="{glue}/SST-2/dev.tsv"), "dev.tsv")
    T("data-dir-is-rte-train-tsv", C, train(task="rte", data="{glue}/RTE/train.tsv"), "train.tsv")

    def dev_link(ws):
        glue_bad("sst2")(ws)
        dev = ws.path("bad/SST-2/dev.tsv")
        dev.unlink()
        dev.symlink_to("train.tsv")
    T("sst2-dev-symlink-to-train", C, train(data="{ws}/bad"), "dev.tsv", dev_link)

    def dev_hardlink(ws):
        glue_bad("sst2")(ws)
        dev = ws.path("bad/SST-2/dev.tsv")
        dev.unlink()
        os.link(ws.path("bad/SST-2/train.tsv"), dev)
    T("sst2-dev-hardlink-of-train", C, train(data="{ws}/bad"), "dev.tsv", dev_hardlink)

    def dev_copy(ws):
        glue_bad("sst2")(ws)
        shutil.copyfile(ws.path("bad/SST-2/train.tsv"), ws.path("bad/SST-2/dev.tsv"))
    T("sst2-dev-identical-copy-of-train", C, train(data="{ws}/bad"), "dev.tsv", dev_copy)
    T("squad-single-file-train", C, train(task="squad_v1", data="{squad}/squad/dev-v1.1.json"), "dev-v1.1.json")
    case("train-all-data-dir-is-file", C,
         ["train-all", "--tasks", "sst2", "--model", "{model}", "--data-dir", "{glue}/SST-2/train.tsv",
          "--output-dir", "{ws}/ta", "--cache-dir", "{ws}/cache", "--no-progress", "--epochs", "1", "--max-steps", "1"],
         "train.tsv")


# ============================================================================= flag values
def _flag_cases() -> None:
    C = "train_flags"

    def f(id, flags, expect, task="sst2", data="{glue}", **kw):
        T(id, C, train(*flags, task=task, data=data), expect, **kw)

    rank, alpha, lr = ("--rank", "lora_rank"), ("--alpha", "lora_alpha"), ("--lr", "learning_rate")
    f("rank-0", ["--rank", "0"], rank)
    f("rank-negative", ["--rank", "-1"], rank)
    f("rank-huge", ["--rank", "100000"], rank)
    f("rank-not-int", ["--rank", "eight"], rank)
    f("alpha-0", ["--alpha", "0"], alpha)
    f("alpha-negative", ["--alpha", "-8"], alpha)
    f("dropout-1", ["--dropout", "1.0"], ("--dropout", "lora_dropout"))
    f("dropout-negative", ["--dropout", "-0.1"], ("--dropout", "lora_dropout"))
    f("head-dropout-1", ["--head-dropout", "1.0"], ("--head-dropout", "head_dropout"))
    f("lr-0", ["--lr", "0"], lr)
    f("lr-negative", ["--lr", "-5e-4"], lr)
    f("lr-nan", ["--lr", "nan"], lr)
    f("lr-inf", ["--lr", "inf"], lr)
    f("lr-not-a-number", ["--lr", "5e-4x"], lr)
    f("epochs-0", ["--epochs", "0"], ("--epochs", "epochs"))
    f("epochs-negative", ["--epochs", "-2"], ("--epochs", "epochs"))
    f("epochs-float", ["--epochs", "1.5"], ("--epochs", "epochs"))
    f("batch-size-0", ["--batch-size", "0"], ("--batch-size", "batch_size"))
    f("batch-size-negative", ["--batch-size", "-1"], ("--batch-size", "batch_size"))
    f("eval-batch-size-0", ["--eval-batch-size", "0"], ("--eval-batch-size", "eval_batch_size"))
    f("grad-accum-0", ["--grad-accum", "0"], ("--grad-accum", "grad_accum"))
    f("max-length-600", ["--max-length", "600"], ("--max-length", "max_length"))
    # transformers' run_glue.py spellings (hidden aliases of our flags)
    f("alias-lr-text", ["--learning_rate", "fast"], ("--learning_rate", "fast"))
    f("alias-lr-nan", ["--learning_rate", "nan"], lr)
    f("alias-lr-inf", ["--learning_rate", "inf"], lr)
    f("alias-epochs-fraction", ["--num_train_epochs", "2.5"], ("--num_train_epochs", "--max-steps"))
    f("alias-epochs-0", ["--num_train_epochs", "0"], ("--epochs", "epochs"))
    f("alias-and-flag-disagree", ["--learning_rate", "1e-3", "--lr", "5e-4"], ("--learning_rate", "--lr"))
    f("alias-fp16-and-bf16", ["--fp16", "--bf16"], ("--bf16", "--mixed-precision"))
    f("alias-batch-0", ["--per_device_train_batch_size", "0"], ("--batch-size", "batch_size"))
    f("alias-seq-huge", ["--max_seq_length", "9" * 400], ("--max-length", "max_length"))
    f("alias-rank-float", ["--lora_r", "8.5"], ("--lora_r", "8.5"))
    # LoRA variants (PEFT's names)
    layers = ("--layers-to-transform", "layers_to_transform")
    f("layers-not-numbers", ["--layers-to-transform", "last"], layers)
    f("layers-repeated", ["--layers-to-transform", "1,1"], layers)
    f("layers-negative", ["--layers-to-transform", "-1"], layers)
    f("layers-empty", ["--layers-to-transform", ""], layers)
    f("layers-unicode-digits", ["--layers-to-transform", "\u0661"], layers)
    f("layers-beyond-the-model", ["--layers-to-transform", "0,7"], ("layers_to_transform", "7"))
    f("layers-huge", ["--layers-to-transform", "9" * 400], layers)
    ratio = ("--loraplus-lr-ratio", "loraplus_lr_ratio")
    f("loraplus-0", ["--loraplus-lr-ratio", "0"], ratio)
    f("loraplus-negative", ["--loraplus-lr-ratio", "-16"], ratio)
    f("loraplus-nan", ["--loraplus-lr-ratio", "nan"], ratio)
    f("loraplus-inf", ["--loraplus-lr-ratio", "inf"], ratio)
    f("loraplus-text", ["--loraplus-lr-ratio", "sixteen"], "--loraplus-lr-ratio")
    f("init-unknown", ["--init-lora-weights", "loftq"], ("--init-lora-weights", "kaiming"))
    f("pissa-with-dora", ["--init-lora-weights", "pissa", "--use-dora"], ("init_lora_weights", "--use-dora"))
    f("orthogonal-odd-rank", ["--init-lora-weights", "orthogonal", "--rank", "7"], ("orthogonal", "--rank 6"))
    f("olora-rank-too-big", ["--init-lora-weights", "olora", "--rank", "600"], ("rank",))
    f("dora-with-head-method", ["--use-dora", "--method", "head"], ("--use-dora", "head"))
    f("loraplus-with-full-method", ["--loraplus-lr-ratio", "16", "--method", "full"], ("--loraplus-lr-ratio", "full"))
    f("max-length-0", ["--max-length", "0"], ("--max-length", "max_length"))
    f("max-length-2", ["--max-length", "2"], ("--max-length", "max_length"))
    f("squad-max-length-600", ["--max-length", "600"], ("--max-length", "max_length"), task="squad_v1",
      data="{squad}")
    f("squad-doc-stride-0", ["--doc-stride", "0"], ("--doc-stride", "doc_stride"), task="squad_v1", data="{squad}")
    f("squad-doc-stride-ge-max-length", ["--max-length", "64", "--doc-stride", "64"],
      ("--doc-stride", "doc_stride"), task="squad_v1", data="{squad}")
    f("seed-negative", ["--seed", "-1"], ("--seed", "seed"))
    f("seed-2**40", ["--seed", str(2**40)], ("--seed", "seed"))
    f("targets-unknown", ["--targets", "querry,value"], ("--targets", "querry"))
    f("targets-empty", ["--targets", ""], ("--targets", "targets"))
    f("targets-all", ["--targets", "all"], ("--targets", "'all'"))
    f("task-unknown", [], ("--task", "sst3"), task="sst3")
    f("task-name-huge", [], ("unknown task", "xxx..."), task="x" * 5000)
    f("recipe-unknown", ["--recipe", "pisa"], ("unknown recipe 'pisa'", "pissa"))
    f("task-toml-missing", [], ("--task", "my_task.toml"), task="{ws}/my_task.toml")
    f("head-bad", ["--head", "big"], ("--head", "big"))
    f("method-bad", ["--method", "qlora"], ("--method", "qlora"))
    f("mixed-precision-fp16-cpu", ["--mixed-precision", "fp16"], ("--mixed-precision", "fp16"))
    f("quantize-4bit-cpu", ["--quantize", "4bit"], ("--quantize", "4bit"))
    f("quantize-8bit-cpu", ["--quantize", "8bit"], ("--quantize", "8bit"))
    f("optim-adamw_8bit-cpu", ["--optim", "adamw_8bit"], ("--optim", "adamw_8bit"))
    f("optim-paged-cpu", ["--optim", "paged_adamw_8bit"], ("--optim", "paged_adamw_8bit"))
    f("warmup-ratio-1.5", ["--warmup-ratio", "1.5"], ("--warmup-ratio", "warmup_ratio"))
    f("warmup-ratio-negative", ["--warmup-ratio", "-0.1"], ("--warmup-ratio", "warmup_ratio"))
    f("weight-decay-negative", ["--weight-decay", "-0.01"], ("--weight-decay", "weight_decay"))
    f("max-train-samples-0", ["--max-train-samples", "0"], ("--max-train-samples", "max_train_samples"))
    f("max-eval-samples-0", ["--max-eval-samples", "0"], ("--max-eval-samples", "max_eval_samples"))
    f("max-steps-0", ["--max-steps", "0"], ("--max-steps", "max_steps"))
    f("num-workers-negative", ["--num-workers", "-1"], ("--num-workers", "num_workers"))
    f("attn-implementation-flash", ["--attn-implementation", "flash_attention_2"], ("--attn-implementation",))
    f("compile-backend-bogus", ["--torch-compile", "--torch-compile-backend", "tvm"], ("--torch-compile-backend", "tvm"))
    T("no-model-offline", C, train(model=None), "--model")
    T("no-data-dir-offline", C, train(data=None), "--data-dir")


# ============================================================================= --config TOML
def _config_cases() -> None:
    C = "config_toml"
    base = ["epochs = 1", "max_train_samples = 16", "max_eval_samples = 8", "batch_size = 8"]

    def c(id, bad, expect, data="{glue}", model="{model}"):
        """A cfg.toml of `base` plus the `bad` line(s); a base key set again by `bad` is left out of `base`."""
        if isinstance(bad, bytes):
            body: str | bytes = bad
        else:
            keys = {line.split("=")[0].strip() for line in bad.splitlines() if "=" in line}
            body = "\n".join([line for line in base if line.split("=")[0].strip() not in keys] + [bad]) + "\n"
        expect = (expect,) if isinstance(expect, str) else tuple(expect)
        T(id, C, train("--config", "{ws}/cfg.toml", data=data, model=model, short=False), expect + ("cfg.toml",),
          write_toml("cfg.toml", body))

    c("lr-string", 'learning_rate = "5e-4"', "learning_rate")
    c("epochs-bool", "epochs = true", "epochs")
    c("rank-float", "lora_rank = 2.5", "lora_rank")
    c("unknown-key", "learnig_rate = 5e-4", "learnig_rate")
    c("broken-toml", "epochs = \nlora_rank = 8", ())
    c("not-utf8", b"# r\xe9glages\nepochs = 1\n", ())
    c("recipe-not-table", "recipe = 3", "recipe")
    c("recipe-unknown-key", "[recipe]\nlr = 1e-3", "lr")
    c("nested-unknown-table", "[training]\nepochs = 1", "training")
    c("batch-size-string", 'batch_size = "16"', "batch_size")
    c("dropout-string", 'lora_dropout = "0.1"', "lora_dropout")
    c("alpha-string", 'lora_alpha = "8"', "lora_alpha")
    c("warmup-string", 'warmup_ratio = "0.1"', "warmup_ratio")
    c("seed-string", 'seed = "x"', "seed")
    c("max-steps-float", "max_steps = 2.5", "max_steps")
    c("num-workers-string", 'num_workers = "2"', "num_workers")
    c("group-by-length-string", 'group_by_length = "no"', "group_by_length")
    c("resume-string", 'resume = "yes"', "resume")
    c("targets-int", "targets = 5", "targets")
    c("targets-list-unknown", 'targets = ["query", "bogus"]', "bogus")
    c("head-bad", 'head = "big"', ("head", "big"))
    c("method-bad", 'method = "qlora"', ("method", "qlora"))
    c("mixed-precision-fp16-cpu", 'mixed_precision = "fp16"', ("mixed_precision", "fp16"))
    c("quantize-4bit-cpu", 'quantize = "4bit"', ("quantize", "4bit"))
    c("optim-8bit-cpu", 'optim = "adamw_8bit"', ("optim", "adamw_8bit"))
    c("max-length-600", "max_length = 600", ("max_length", "600"))
    c("epochs-negative", "epochs = -3", "epochs")
    c("lr-zero", "learning_rate = 0", "learning_rate")
    c("init-from-missing", 'init_from = "{ws}/no_adapter_here"', "no_adapter_here")
    c("data-dir-missing", 'data_dir = "{ws}/no_data_here"', "no_data_here", data=None)
    c("model-missing", 'model = "{ws}/no_model_here"', "no_model_here", model=None)
    T("config-file-missing", C, train("--config", "{ws}/nope.toml"), "nope.toml")

    def cfg_dir(ws):
        ws.path("cfg_dir.toml").mkdir()
    T("config-is-directory", C, train("--config", "{ws}/cfg_dir.toml"), "cfg_dir.toml", cfg_dir)


# ============================================================================= broken model folders
def _model_cases() -> None:
    C = "model_folder"

    def broken(name: str, action: Callable[[Path], Any]) -> Callable[[Workspace], None]:
        def setup(ws: Workspace) -> None:
            folder = ws.fixture("model", as_name=name)
            action(folder)
        return setup

    def rm(*names):
        return lambda folder: [(folder / n).unlink() for n in names]

    def m(id, setup, name):
        T(id, C, train(model="{ws}/" + name), name, setup)

    m("no-tokenizer-files", broken("model_no_tok", rm("tokenizer.json", "tokenizer_config.json")), "model_no_tok")
    m("config-json-only", broken("model_cfg_only", rm("tokenizer.json", "tokenizer_config.json", "model.safetensors")),
      "model_cfg_only")
    m("no-weights", broken("model_no_weights", rm("model.safetensors")), "model_no_weights")
    m("truncated-weights", broken("model_truncated", lambda f: truncate(f / "model.safetensors", 0.6)), "model_truncated")
    m("random-bytes-weights", broken("model_garbage", lambda f: (f / "model.safetensors").write_bytes(os.urandom(4096))),
      "model_garbage")
    m("config-not-json", broken("model_bad_cfg", lambda f: (f / "config.json").write_text("hidden_size: 32\n")),
      "model_bad_cfg")
    m("config-wrong-hidden-size", broken("model_mismatch", lambda f: (f / "config.json").write_text(
        json.dumps({**json.loads((f / "config.json").read_text()), "hidden_size": 64, "intermediate_size": 128}))),
      "model_mismatch")
    m("tokenizer-json-broken", broken("model_bad_tok", lambda f: truncate(f / "tokenizer.json", 0.5)), "model_bad_tok")

    def big_vocab(folder: Path) -> None:
        # A tokenizer of 1,800 tokens on a model with 400 embeddings: the data's ids go up to ~950.
        from roberta_lora.model.toy import train_toy_tokenizer

        from fixtures_glue import sentence
        corpus = [sentence(i).lower() for i in range(200)] + [f"word{i} token{i * 7} thing{i * 13}" for i in range(400)]
        train_toy_tokenizer(corpus, vocab_size=2000).save_pretrained(folder)
    m("tokenizer-larger-than-embeddings", broken("model_big_vocab", big_vocab), "model_big_vocab")

    def empty(ws):
        ws.path("model_empty").mkdir()
    m("empty-folder", empty, "model_empty")
    T("adapter-folder-as-model", C, train(model="{adapter_sst2}"), "adapter_sst2")
    T("file-as-model", C, train(model="{model}/model.safetensors"), "model.safetensors")
    T("nonexistent-path", C, train(model="{ws}/models/roberta-bsae"), "roberta-bsae")
    case("params-empty-folder", C, ["params", "--model", "{ws}/model_empty"], "model_empty", empty)
    case("evaluate-with-config-only-model", C,
         ["evaluate", "--adapter", "{adapter_sst2}", "--model", "{ws}/model_cfg_only", "--data-dir", "{glue}"],
         "model_cfg_only", broken("model_cfg_only", rm("tokenizer.json", "tokenizer_config.json", "model.safetensors")))
    case("predict-with-truncated-weights", C,
         ["predict", "--adapter", "{adapter_sst2}", "--model", "{ws}/model_truncated", "--text", "a fine film"],
         "model_truncated", broken("model_truncated", lambda f: truncate(f / "model.safetensors", 0.6)))


# ============================================================================= output folders
def _output_cases() -> None:
    C = "output_dir"

    def o(id, out, expect, setup=None, cwd=".", **kw):
        case(id, C, train(out=out), expect, setup, cwd=cwd, **kw)

    o("empty-string", "", "--output-dir", project_dir, cwd="project_dir")
    o("current-directory", ".", ("--output-dir", "project_dir"), project_dir, cwd="project_dir")
    o("model-checkpoint-folder", "{ws}/checkpoint_dir", ("--output-dir", "checkpoint_dir"),
      lambda ws: ws.fixture("model", as_name="checkpoint_dir"))
    o("folder-of-notes", "{ws}/notes_dir", ("--output-dir", "notes_dir"), notes_dir)
    o("data-folder", "{glue}", ("--output-dir", "glue"))
    o("repo-root", "{ws}/project_dir", ("--output-dir", "project_dir"), project_dir)

    def link(ws):
        notes_dir(ws)
        ws.path("notes_link").symlink_to(ws.path("notes_dir"))
    o("symlink-to-notes", "{ws}/notes_link", ("--output-dir", "notes_link"), link)
    o("path-is-file", "{ws}/results.txt", "results.txt", lambda ws: ws.write("results.txt", "old results\n"))
    o("parent-is-file", "{ws}/results.txt/run", "results.txt", lambda ws: ws.write("results.txt", "old results\n"))

    def locked(ws):
        ws.path("locked").mkdir()
        ws.write("locked/keep.txt", "keep\n")
        chmod(ws.path("locked"), 0o500, "w")
    o("unwritable-folder", "{ws}/locked", "locked", locked)
    o("unwritable-parent", "{ws}/locked/run", "locked", locked)
    o("finished-run-without-resume", "{run_sst2}", "run_sst2")
    o("unfinished-run-without-resume", "{run_unfinished}", "run_unfinished")
    o("adapter-folder", "{adapter_sst2}", "adapter_sst2")


# ============================================================================= --resume misuse
def _resume_cases() -> None:
    C = "resume"
    # The interrupted run was started as: train --task sst2 --model TPL_MODEL --data-dir TPL_GLUE --epochs 2
    # --batch-size 8 (killed after epoch 1's checkpoint). Resume with the same paths; change one thing.
    same = ["train", "--task", "sst2", "--model", "{tpl_model}", "--data-dir", "{tpl_glue}", "--epochs", "2",
            "--batch-size", "8", "--no-progress", "--cache-dir", "{ws}/cache", "--resume", "--output-dir"]

    def r(id, out, changed, expect, setup=None):
        case(id, C, same + [out] + changed, expect, setup)

    r("folder-not-a-run", "{ws}/notes_dir", [], "notes_dir", notes_dir)
    r("nonexistent-folder", "{ws}/never_ran", [], "never_ran")
    r("empty-folder", "{ws}/empty_run", [], "empty_run", lambda ws: ws.path("empty_run").mkdir())
    r("model-checkpoint-folder", "{ws}/checkpoint_dir", [], "checkpoint_dir",
      lambda ws: ws.fixture("model", as_name="checkpoint_dir"))
    r("different-lr", "{run_unfinished}", ["--lr", "1e-3"], ("--lr", "learning_rate"))
    r("different-model", "{run_unfinished}", ["--model", "{other_model}"], ("--model", "other_base"))
    r("different-epochs", "{run_unfinished}", ["--epochs", "3"], ("--epochs", "epochs"))
    r("different-rank", "{run_unfinished}", ["--rank", "4"], ("--rank", "lora_rank"))
    r("different-alpha", "{run_unfinished}", ["--alpha", "16"], ("--alpha", "lora_alpha"))
    r("different-targets", "{run_unfinished}", ["--targets", "all-linear"], ("--targets", "targets"))
    r("different-head", "{run_unfinished}", ["--head", "light"], ("--head", "head"))
    r("different-method", "{run_unfinished}", ["--method", "head"], ("--method", "method"))
    r("different-batch-size", "{run_unfinished}", ["--batch-size", "4"], ("--batch-size", "batch_size"))
    r("different-seed", "{run_unfinished}", ["--seed", "7"], ("--seed", "seed"))
    r("different-task", "{run_unfinished}", ["--task", "rte"], ("--task", "rte"))
    r("finished-run", "{run_sst2}", [], "run_sst2")
    r("corrupt-training-state", "{run_unfinished}", [], "training_state.pt",
      lambda ws: truncate(ws.fixture("run_unfinished") / "checkpoint" / "training_state.pt", 0.5))
    case("resume-without-output-dir", C, train("--resume", out=None), "--output-dir")


# ============================================================================= evaluate misuse
def _evaluate_cases() -> None:
    C = "evaluate"

    def e(id, extra, expect, setup=None, adapter="{adapter_sst2}", data="{glue}", model="{model}", **kw):
        argv = ["evaluate", "--adapter", adapter]
        argv += ["--model", model] if model else []
        argv += ["--data-dir", data] if data else []
        case(id, C, argv + ["--batch-size", "8"] + extra, expect, setup, **kw)

    def broken_adapter(action):
        return lambda ws: action(ws.fixture("adapter_sst2"))

    e("adapter-missing", [], "no_such_adapter", adapter="{ws}/no_such_adapter")
    e("adapter-config-corrupt", [], "adapter_config.json",
      broken_adapter(lambda a: (a / "adapter_config.json").write_text('{"task_type": "glue", ')))
    e("adapter-config-missing", [], "adapter_config.json", broken_adapter(lambda a: (a / "adapter_config.json").unlink()))
    e("adapter-config-is-list", [], "adapter_config.json",
      broken_adapter(lambda a: (a / "adapter_config.json").write_text("[]")))
    e("tensors-missing", [], "adapter.safetensors", broken_adapter(lambda a: (a / "adapter.safetensors").unlink()))
    e("tensors-truncated", [], ("adapter.safetensors", "adapter_sst2"),
      broken_adapter(lambda a: truncate(a / "adapter.safetensors", 0.5)))
    e("adapter-is-file", [], "adapter.safetensors", adapter="{adapter_sst2}/adapter.safetensors")

    def link_out(name):  # the file is a symbolic link to another folder's copy
        def setup(ws):
            adapter = ws.fixture("adapter_sst2")
            elsewhere = shutil.copytree(adapter, adapter.parent / "elsewhere")
            (adapter / name).unlink()
            os.symlink(elsewhere / name, adapter / name)
        return setup
    e("tensors-link-out-of-folder", [], ("symbolic link", "adapter.safetensors", "outside"), link_out("adapter.safetensors"))
    e("config-link-out-of-folder", [], ("symbolic link", "adapter_config.json", "outside"), link_out("adapter_config.json"))
    e("adapter-is-model-folder", [], "tiny_base", adapter="{model}")
    e("adapter-is-peft-folder", [], "peft_sst2", adapter="{peft_sst2}")
    e("batch-size-0", ["--batch-size", "0"], ("--batch-size", "batch_size"))
    e("batch-size-negative", ["--batch-size", "-4"], ("--batch-size", "batch_size"))
    e("max-eval-samples-0", ["--max-eval-samples", "0"], ("--max-eval-samples", "max_eval_samples"))
    e("max-eval-samples-negative", ["--max-eval-samples", "-1"], ("--max-eval-samples", "max_eval_samples"))
    e("sst2-adapter-task-rte", ["--task", "rte"], ("--task", "rte"))
    e("sst2-adapter-task-mnli", ["--task", "mnli"], ("--task", "mnli"))
    e("sst2-adapter-task-stsb", ["--task", "stsb"], ("--task", "stsb"))
    e("sst2-adapter-task-squad_v1", ["--task", "squad_v1"], ("--task", "squad_v1"), data="{squad}")
    e("squad-adapter-task-sst2", ["--task", "sst2"], ("--task", "sst2"), adapter="{adapter_squad}")
    e("task-unknown", ["--task", "sst3"], ("--task", "sst3"))
    e("no-data-dir-offline", [], "--data-dir", data=None)
    e("data-dir-missing", [], ("--data-dir", "no_data_here"), data="{ws}/no_data_here")
    e("data-dir-bad-dev-file", [], "SST-2/dev.tsv", glue_bad("sst2", set_cell(2, 1, 9), split="dev"), data="{ws}/bad")
    e("other-base-model", [], ("other_base", "fingerprint"), model="{other_model}")
    e("output-is-the-validation-file", ["--output", "{glue}/SST-2/dev.tsv"], ("--output", "dev.tsv"))
    e("output-is-a-folder", ["--output", "{ws}/notes_dir"], ("--output", "notes_dir"), notes_dir)
    e("device-unknown", ["--device", "gpu"], "--device 'gpu'")
    e("device-cuda-absent", ["--device", "cuda:99"], "--device cuda:99")
    e("dtype-float16-on-cpu", ["--device", "cpu", "--dtype", "float16"], "--dtype float16")
    e("dtype-unknown", ["--dtype", "half"], "--dtype")
    e("output-parent-is-file", ["--output", "{ws}/results.txt/metrics.json"], ("--output", "results.txt"),
      lambda ws: ws.write("results.txt", "old\n"))


# ============================================================================= predict misuse
def _predict_cases() -> None:
    C = "predict"

    def p(id, extra, expect, setup=None, adapter="{adapter_sst2}"):
        case(id, C, ["predict", "--adapter", adapter, "--model", "{model}"] + extra, expect, setup)

    p("no-text", [], ("--text", "--input"))
    p("text-pair-count-mismatch", ["--text", "a good film", "--text", "a bad film", "--text-pair", "x"],
      ("--text-pair", "text pair"))
    p("text-pair-with-input", ["--input", "{ws}/in.txt", "--text-pair", "x"], "--text-pair",
      lambda ws: ws.write("in.txt", "a good film\n"))
    p("text-and-input", ["--text", "a", "--input", "{ws}/in.txt"], ("--text", "--input"),
      lambda ws: ws.write("in.txt", "a good film\n"))
    p("input-missing", ["--input", "{ws}/examples.jsonl"], "examples.jsonl")
    p("input-bad-jsonl", ["--input", "{ws}/in.jsonl"], "in.jsonl",
      lambda ws: ws.write("in.jsonl", '{"text": "a good film"}\n{"text": "a bad film"\n'))
    p("input-empty-file", ["--input", "{ws}/in.jsonl"], "in.jsonl", lambda ws: ws.write("in.jsonl", ""))
    p("input-is-directory", ["--input", "{ws}/inputs"], "inputs", lambda ws: ws.path("inputs").mkdir())
    p("input-wrong-keys", ["--input", "{ws}/in.jsonl"], ("in.jsonl", "sentence"),
      lambda ws: ws.write("in.jsonl", '{"sentence": "a good film"}\n'))
    p("input-text-not-string", ["--input", "{ws}/in.jsonl"], "in.jsonl",
      lambda ws: ws.write("in.jsonl", '{"text": 5}\n'))
    p("input-json-array-line", ["--input", "{ws}/in.jsonl"], "in.jsonl",
      lambda ws: ws.write("in.jsonl", '["a good film", "a bad film"]\n'))
    p("input-pairs-on-some-lines", ["--input", "{ws}/in.jsonl"], "in.jsonl",
      lambda ws: ws.write("in.jsonl", '{"text": "a", "text_pair": "b"}\n{"text": "c"}\n'))
    p("input-not-utf8", ["--input", "{ws}/in.txt"], "in.txt", lambda ws: ws.write("in.txt", b"caf\xe9 au lait\n"))
    # Text the tokenizer cannot take: argv bytes that are not UTF-8 (Python decodes b"\xff" to "\udcff"), half a
    # JSON \u escape pair, empty or blank text. The message names which --text / which line and field.
    p("text-not-utf8-argv", ["--text", "a good film", "--text", "caf" + os.fsdecode(b"\xff")], "--text 2")
    p("text-pair-not-utf8-argv", ["--text", "a", "--text-pair", os.fsdecode(b"\xe9t\xe9")], "--text-pair")
    p("text-empty", ["--text", ""], "--text is empty")
    p("text-whitespace-only", ["--text", "a good film", "--text", "   "], "--text 2")
    p("input-jsonl-lone-surrogate", ["--input", "{ws}/in.jsonl"], 'in.jsonl:2: "text"',
      lambda ws: ws.write("in.jsonl", '{"text": "a good film"}\n{"text": "bad \\ud800 film"}\n'))
    p("input-jsonl-pair-lone-surrogate", ["--input", "{ws}/in.jsonl"], 'in.jsonl:3: "text_pair"',
      lambda ws: ws.write("in.jsonl", '{"text": "a", "text_pair": "b"}\n\n{"text": "c", "text_pair": "\\udfff"}\n'))
    p("input-jsonl-empty-text", ["--input", "{ws}/in.jsonl"], 'in.jsonl:1: "text"',
      lambda ws: ws.write("in.jsonl", '{"text": ""}\n'))
    p("input-txt-zero-width-line", ["--input", "{ws}/in.txt"], "in.txt:3",
      lambda ws: ws.write("in.txt", "a good film\n\n\u200b\u200b\na bad film\n"))
    p("squad-context-lone-surrogate", ["--input", "{ws}/in.jsonl"], 'in.jsonl:1: "context"',
      lambda ws: ws.write("in.jsonl", '{"question": "Who sat?", "context": "The cat \\udc80 sat."}\n'),
      adapter="{adapter_squad}")
    # --device / --dtype: refused before the model loads (cuda:99 is absent with or without a GPU).
    p("device-unknown", ["--text", "a", "--device", "gpu"], "--device 'gpu'")
    p("device-cuda-absent", ["--text", "a", "--device", "cuda:99"], "--device cuda:99")
    p("dtype-float16-on-cpu", ["--text", "a", "--device", "cpu", "--dtype", "float16"], "--dtype float16")
    p("dtype-unknown", ["--text", "a", "--dtype", "fp16"], "--dtype")
    p("squad-without-context", ["--text", "Who sat?"], "--text-pair", adapter="{adapter_squad}")
    p("squad-pair-count-mismatch", ["--text", "Who sat?", "--text", "Where?", "--text-pair", "The cat sat."],
      ("--text-pair", "text pair"), adapter="{adapter_squad}")
    p("adapter-missing", ["--text", "a"], "no_such_adapter", adapter="{ws}/no_such_adapter")
    p("adapter-config-corrupt", ["--text", "a"], "adapter_config.json",
      lambda ws: (ws.fixture("adapter_sst2") / "adapter_config.json").write_text("{"))
    p("adapter-tensors-truncated", ["--text", "a"], ("adapter.safetensors", "adapter_sst2"),
      lambda ws: truncate(ws.fixture("adapter_sst2") / "adapter.safetensors", 0.5))
    p("adapter-is-model-folder", ["--text", "a"], "tiny_base", adapter="{model}")
    case("other-base-model", C, ["predict", "--adapter", "{adapter_sst2}", "--model", "{other_model}", "--text", "a"],
         ("other_base", "fingerprint"))


# ============================================================================= score misuse
def _score_cases() -> None:
    C = "score"

    def s(id, task, data, preds, expect, setup=None, extra=()):
        case(id, C, ["score", "--task", task, "--data", data, "--predictions", preds, *extra], expect, setup)

    squad_dev = "{squad}/squad/dev-v1.1.json"

    def squad_preds(ws):
        doc = json.loads(Path(ws.format(squad_dev)).read_text())
        ids = [q["id"] for a in doc["data"] for p in a["paragraphs"] for q in p["qas"]]
        ws.write("preds.json", json.dumps({i: "The movie" for i in ids}))

    def glue_preds(labels):
        return lambda ws: ws.write("preds.jsonl", "".join(
            json.dumps({"index": i, "prediction": labels[i % len(labels)]}) + "\n" for i in range(12)))

    s("squad-predictions-missing", "squad_v1", squad_dev, "{ws}/preds.json", "preds.json")
    s("squad-data-missing", "squad_v1", "{ws}/dev-v1.1.json", "{ws}/preds.json", "dev-v1.1.json", squad_preds)
    s("squad-predictions-bad-json", "squad_v1", squad_dev, "{ws}/preds.json", "preds.json",
      lambda ws: ws.write("preds.json", '{"q0_0_0": "The movie",'))
    s("squad-predictions-list", "squad_v1", squad_dev, "{ws}/preds.json", "preds.json",
      lambda ws: ws.write("preds.json", '["The movie"]'))
    s("squad-predictions-is-directory", "squad_v1", squad_dev, "{ws}/preds.json", "preds.json",
      lambda ws: ws.path("preds.json").mkdir())
    s("squad-data-broken-json", "squad_v1", "{ws}/dev.json", "{ws}/preds.json", "dev.json",
      all_of(squad_preds, lambda ws: ws.write("dev.json", '{"data": [')))
    s("squad-predictions-for-another-dataset", "squad_v1", squad_dev, "{ws}/preds.json", "preds.json",
      lambda ws: ws.write("preds.json", json.dumps({f"5733be284776f41900661{i:03d}": "Paris" for i in range(12)})))
    s("glue-predictions-given-to-squad", "squad_v1", squad_dev, "{ws}/preds.jsonl", "preds.jsonl",
      glue_preds(["positive", "negative"]))
    s("squad-predictions-given-to-sst2", "sst2", "{glue}", "{ws}/preds.json", "preds.json", squad_preds)
    s("rte-predictions-given-to-sst2", "sst2", "{glue}", "{ws}/preds.jsonl", ("preds.jsonl", "entailment"),
      glue_preds(["entailment", "not_entailment"]))
    s("glue-index-out-of-range", "sst2", "{glue}", "{ws}/preds.jsonl", ("preds.jsonl", "999"),
      lambda ws: ws.write("preds.jsonl", "".join(json.dumps({"index": i * 999, "prediction": 1}) + "\n" for i in range(12))))
    s("glue-duplicate-index", "sst2", "{glue}", "{ws}/preds.jsonl", "preds.jsonl",
      lambda ws: ws.write("preds.jsonl", "".join(json.dumps({"index": i // 2, "prediction": 1}) + "\n" for i in range(12))))
    s("glue-predictions-empty-file", "sst2", "{glue}", "{ws}/preds.jsonl", "preds.jsonl",
      lambda ws: ws.write("preds.jsonl", ""))
    s("glue-predictions-bad-json-line", "sst2", "{glue}", "{ws}/preds.jsonl", "preds.jsonl",
      lambda ws: ws.write("preds.jsonl", '{"index": 0, "prediction": 1}\n{"index": 1,\n'))
    s("task-unknown", "sst3", "{glue}", "{ws}/preds.jsonl", "sst3", glue_preds([0, 1]))
    s("split-unknown", "sst2", "{glue}", "{ws}/preds.jsonl", ("--split", "test_matched"), glue_preds([0, 1]),
      extra=("--split", "test_matched"))
    s("na-probs-missing", "squad_v2", "{squad}/squad/dev-v2.0.json", "{ws}/preds.json", "na_probs.json", squad_preds,
      extra=("--na-probs", "{ws}/na_probs.json"))
    s("na-probs-with-glue-task", "sst2", "{glue}", "{ws}/preds.jsonl", "--na-probs",
      all_of(glue_preds([0, 1]), lambda ws: ws.write("na.json", "{}")), extra=("--na-probs", "{ws}/na.json"))


# ============================================================================= merge / export-peft / import-peft
def _merge_peft_cases() -> None:
    C = "merge_peft"

    # A fresh --output folder ({ws}/merged, peft_out, imported) is where these commands legitimately write.
    writes = ("cache", "merged", "peft_out", "imported")

    def mg(id, extra, expect, setup=None, adapter="{adapter_sst2}"):
        case(id, C, ["merge", "--adapter", adapter, "--model", "{model}"] + extra, expect, setup, may_write=writes)

    mg("merge-output-not-empty", ["--output", "{ws}/notes_dir"], ("notes_dir", "--overwrite"), notes_dir)
    mg("merge-output-is-source-adapter", ["--output", "{adapter_sst2}"], "adapter_sst2")
    mg("merge-output-is-source-adapter-overwrite", ["--output", "{adapter_sst2}", "--overwrite"], "adapter_sst2")
    mg("merge-output-is-base-model-overwrite", ["--output", "{model}", "--overwrite"], ("--output", "tiny_base"))
    mg("merge-output-is-file", ["--output", "{ws}/results.txt"], "results.txt", lambda ws: ws.write("results.txt", "x\n"))
    mg("merge-adapter-missing", ["--output", "{ws}/merged"], "no_such_adapter", adapter="{ws}/no_such_adapter")
    mg("merge-adapter-truncated", ["--output", "{ws}/merged"], ("adapter.safetensors", "adapter_sst2"),
       lambda ws: truncate(ws.fixture("adapter_sst2") / "adapter.safetensors", 0.5))
    case("merge-other-base-model", C,
         ["merge", "--adapter", "{adapter_sst2}", "--model", "{other_model}", "--output", "{ws}/merged"],
         ("other_base", "fingerprint"), may_write=writes)

    def ex(id, extra, expect, setup=None, adapter="{adapter_sst2_roberta}"):
        case(id, C, ["export-peft", "--adapter", adapter] + extra, expect, setup, may_write=writes)

    ex("export-light-head", ["--output", "{ws}/peft_out"], ("light", "adapter_sst2"), adapter="{adapter_sst2}")
    ex("export-output-not-empty", ["--output", "{ws}/notes_dir"], ("notes_dir", "--overwrite"), notes_dir)
    ex("export-output-is-source-overwrite", ["--output", "{adapter_sst2_roberta}", "--overwrite"],
       "adapter_sst2_roberta")
    ex("export-output-is-file", ["--output", "{ws}/results.txt"], "results.txt", lambda ws: ws.write("results.txt", "x\n"))
    ex("export-adapter-missing", ["--output", "{ws}/peft_out"], "no_such_adapter", adapter="{ws}/no_such_adapter")
    ex("export-adapter-config-corrupt", ["--output", "{ws}/peft_out"], "adapter_config.json",
       lambda ws: (ws.fixture("adapter_sst2_roberta") / "adapter_config.json").write_text("{]"))

    def im(id, extra, expect, setup=None, peft="{peft_sst2}", output="{ws}/imported"):
        case(id, C, ["import-peft", "--peft", peft, "--output", output, "--model", "{model}"] + extra, expect, setup,
             may_write=writes)

    im("import-task-mnli-for-2-classes", ["--task", "mnli"], ("--task", "mnli"))
    im("import-task-stsb-for-2-classes", ["--task", "stsb"], ("--task", "stsb"))
    im("import-task-squad-for-seq-cls", ["--task", "squad_v1"], ("--task", "squad_v1"))
    im("import-task-unknown", ["--task", "sst3"], "sst3")

    def pickle_only(ws):
        import torch
        from safetensors.torch import load_file
        folder = ws.fixture("peft_sst2", as_name="peft_pickle")
        torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
        (folder / "adapter_model.safetensors").unlink()
    im("import-pickle-bin-only", ["--task", "sst2"], ("adapter_model.bin", "peft_pickle"), pickle_only,
       peft="{ws}/peft_pickle")

    def peft_config(change):
        def setup(ws):
            folder = ws.fixture("peft_sst2", as_name="peft_edit")
            path = folder / "adapter_config.json"
            config = json.loads(path.read_text())
            change(config)
            path.write_text(json.dumps(config))
        return setup
    im("import-dora-without-magnitudes", ["--task", "sst2"], ("use_dora", "DoRA", "lora_magnitude_vector"), peft_config(lambda c: c.update(use_dora=True)),
       peft="{ws}/peft_edit")
    im("import-rank-pattern", ["--task", "sst2"], "rank_pattern",
       peft_config(lambda c: c.update(rank_pattern={"query": 4})), peft="{ws}/peft_edit")
    im("import-config-corrupt", ["--task", "sst2"], ("adapter_config.json", "peft_edit"),
       lambda ws: (ws.fixture("peft_sst2", as_name="peft_edit") / "adapter_config.json").write_text("{"),
       peft="{ws}/peft_edit")
    im("import-folder-missing", ["--task", "sst2"], "no_such_peft", peft="{ws}/no_such_peft")
    im("import-our-adapter-as-peft", ["--task", "sst2"], "adapter_sst2", peft="{adapter_sst2}")
    im("import-output-is-peft-folder", ["--task", "sst2"], ("--output", "peft_sst2"), output="{peft_sst2}")
    im("import-output-is-existing-adapter", ["--task", "sst2"], ("--output", "adapter_sst2"), output="{adapter_sst2}")
    im("import-output-not-empty", ["--task", "sst2"], ("--output", "notes_dir"), notes_dir, output="{ws}/notes_dir")


# ============================================================================= train-all
def _train_all_cases() -> None:
    C = "train_all"

    def ta(id, extra, expect, setup=None, data="{glue}", tasks="sst2,rte", out="{ws}/ta"):
        argv = ["train-all", "--model", "{model}", "--cache-dir", "{ws}/cache", "--no-progress", "--epochs", "1",
                "--batch-size", "8", "--max-steps", "1", "--max-eval-samples", "4"]
        argv += ["--tasks", tasks] if tasks is not None else []
        argv += ["--data-dir", data] if data is not None else []
        argv += ["--output-dir", out] if out is not None else []
        case(id, C, argv + extra, expect, setup)

    ta("one-unknown-task", [], "sst3", tasks="sst2,sst3")
    ta("one-unknown-task-last", [], "bogus", tasks="sst2,rte,bogus")

    def only_sst2(ws):
        write_glue_fixture(ws.path("sst2_only"), "sst2")
    ta("one-missing-data-folder", [], ("RTE", "rte"), only_sst2, data="{ws}/sst2_only")

    def rte_bad(ws):
        write_glue_fixture(ws.path("mixed"), "sst2")
        glue_bad("rte", set_cell(3, 3, "maybe"), root="mixed")(ws)
    ta("second-task-bad-label", [], "RTE/train.tsv", rte_bad, data="{ws}/mixed")
    ta("unknown-method", ["--methods", "lora,qlora"], "qlora")
    ta("bad-rank", ["--rank", "0"], ("--rank", "lora_rank"))
    ta("data-dir-missing", [], ("--data-dir", "no_data_here"), data="{ws}/no_data_here")
    ta("no-data-dir-offline", [], "--data-dir", data=None)
    ta("tasks-empty-list", [], "--tasks", tasks=",")
    ta("output-dir-is-file", [], "results.txt", lambda ws: ws.write("results.txt", "x\n"), out="{ws}/results.txt")
    ta("output-dir-folder-of-notes", [], ("--output-dir", "notes_dir"), notes_dir, out="{ws}/notes_dir")
    ta("config-unknown-key", ["--config", "{ws}/cfg.toml"], "learnig_rate", write_toml("cfg.toml", "learnig_rate = 1e-3\n"))


# ============================================================================= params / inspect / data-info
def _small_command_cases() -> None:
    def pr(id, extra, expect, setup=None, model="{model}"):
        case(id, "params", ["params"] + (["--model", model] if model else []) + extra, expect, setup)

    pr("rank-0", ["--rank", "0"], ("--rank", "lora_rank"))
    pr("rank-negative", ["--rank", "-3"], ("--rank", "lora_rank"))
    pr("rank-huge", ["--rank", "100000"], ("--rank", "lora_rank"))
    pr("num-classes-0", ["--num-classes", "0"], ("--num-classes", "num_classes"))
    pr("num-classes-negative", ["--num-classes", "-2"], ("--num-classes", "num_classes"))
    pr("targets-unknown", ["--targets", "qkv"], ("--targets", "qkv"))
    pr("head-bad", ["--head", "big"], ("--head", "big"))
    pr("task-type-bad", ["--task-type", "squad"], ("--task-type", "squad"))
    pr("no-model-offline", [], "--model", model=None)
    pr("model-nonexistent", [], "no_model_here", model="{ws}/no_model_here")
    pr("model-is-file", [], "config.json", model="{model}/config.json")

    def ins(id, adapter, expect, setup=None):
        case(id, "inspect", ["inspect", "--adapter", adapter], expect, setup)

    ins("missing-folder", "{ws}/no_such_adapter", "no_such_adapter")
    ins("file-not-folder", "{adapter_sst2}/adapter_config.json", "adapter_config.json")
    ins("config-corrupt", "{adapter_sst2}", "adapter_config.json",
        lambda ws: (ws.fixture("adapter_sst2") / "adapter_config.json").write_text('{"lora_rank": 8'))
    ins("config-is-list", "{adapter_sst2}", "adapter_config.json",
        lambda ws: (ws.fixture("adapter_sst2") / "adapter_config.json").write_text("[1, 2]"))
    ins("config-missing", "{adapter_sst2}", "adapter_config.json",
        lambda ws: (ws.fixture("adapter_sst2") / "adapter_config.json").unlink())
    ins("empty-folder", "{ws}/empty_adapter", "empty_adapter", lambda ws: ws.path("empty_adapter").mkdir())
    ins("model-folder", "{model}", ("tiny_base", "adapter_config.json"))
    ins("peft-folder", "{peft_sst2}", "peft_sst2")

    def di(id, task, data, expect, setup=None):
        case(id, "data_info", ["data-info", "--task", task] + (["--data-dir", data] if data else []), expect, setup)

    di("task-unknown", "sst3", "{glue}", "sst3")
    di("task-toml-missing", "{ws}/my_task.toml", "{glue}", "my_task.toml")
    di("data-dir-missing", "sst2", "{ws}/no_data_here", "no_data_here")
    di("no-data-dir-offline", "sst2", None, "--data-dir")
    di("bad-label", "sst2", "{ws}/bad", "SST-2/train.tsv", glue_bad("sst2", set_cell(3, 1, 5)))
    di("empty-file", "rte", "{ws}/bad", "RTE/train.tsv", glue_bad("rte", raw=b""))
    di("squad-broken-json", "squad_v1", "{ws}/bads", "train-v1.1.json", squad_bad(lambda d: b"{"))
    di("squad-answer-not-in-context", "squad_v1", "{ws}/bads", "train-v1.1.json",
       squad_bad(lambda d: first_qa(d)["answers"][0].update(text="zebra crossing")))


# ============================================================================= command line itself
def _cli_cases() -> None:
    C = "cli"
    case("unknown-subcommand", C, ["trian", "--task", "sst2"], "trian")
    case("unknown-flag", C, train("--rnak", "8"), "--rnak")
    case("unknown-flag-evaluate", C, ["evaluate", "--adaptor", "{adapter_sst2}"], ("--adaptor", "--adapter"))
    case("missing-required-task", C, ["train", "--model", "{model}", "--data-dir", "{glue}"], "--task")
    case("missing-required-adapter", C, ["evaluate", "--data-dir", "{glue}"], "--adapter")
    case("positional-task", C, ["train", "sst2", "--model", "{model}"], "sst2")
    case("flag-missing-value", C, ["train", "--task", "sst2", "--lr"], "--lr")
    case("batch-size-not-int", C, train("--batch-size", "8x"), "--batch-size")
    case("lr-empty-value", C, train("--lr="), "--lr")


# ============================================================================= --init-from (warm start)
def _init_from_cases() -> None:
    C = "init_from"
    T("missing-folder", C, train("--init-from", "{ws}/no_such_adapter"), "no_such_adapter")
    T("file-not-folder", C, train("--init-from", "{adapter_sst2}/adapter.safetensors"), "adapter.safetensors")
    T("different-rank", C, train("--init-from", "{adapter_sst2}", "--rank", "4"), ("--rank", "lora_rank", "rank"))
    T("different-targets", C, train("--init-from", "{adapter_sst2}", "--targets", "all-linear"), ("--targets", "targets"))
    T("model-folder", C, train("--init-from", "{model}"), ("tiny_base", "adapter_config.json"))
    T("truncated-adapter", C, train("--init-from", "{adapter_sst2}"), ("adapter.safetensors", "adapter_sst2"),
      lambda ws: truncate(ws.fixture("adapter_sst2") / "adapter.safetensors", 0.5))


# ============================================================================= custom task TOML
def _task_toml_cases() -> None:
    C = "task_toml"
    base = (REPO / "tasks" / "sst2.toml").read_text(encoding="utf-8")

    def tt(id, edit, expect):
        T(id, C, train(task="{ws}/mytask.toml"), expect, lambda ws: ws.write("mytask.toml", edit(base)))

    tt("unknown-key", lambda b: b.replace('kind = "classification"', 'kind = "classification"\nlabels = ["a", "b"]'),
       "labels")
    tt("kind-bogus", lambda b: b.replace('kind = "classification"', 'kind = "classify"'), "classify")
    tt("label-names-empty", lambda b: b.replace('label_names = ["negative", "positive"]', "label_names = []"),
       "label_names")
    tt("main-metric-not-listed", lambda b: b.replace('main_metric = "accuracy"', 'main_metric = "f1"'), "main_metric")
    tt("metric-unknown", lambda b: b.replace('metrics = ["accuracy"]', 'metrics = ["bleu"]'), "bleu")
    tt("broken-toml", lambda b: b.replace('name = "sst2"', "name = sst2"), "mytask.toml")
    tt("text-columns-missing", lambda b: b.replace('text_columns = ["sentence"]  # hub column names', ""),
       "text_columns")
    tt("recipe-lr-string", lambda b: b.replace("learning_rate = 5e-4", 'learning_rate = "5e-4"'), "learning_rate")
    tt("max-length-600", lambda b: b.replace("max_length = 128", "max_length = 600"), "max_length")
    tt("local-format-bogus", lambda b: b.replace('local_format = "glue_tsv"', 'local_format = "xlsx"'), "xlsx")


# ============================================================================= silent or raw results
def _silent_result_cases() -> None:
    """Mistakes that used to give a result anyway, or a traceback: an adapter config of `{}` (defaults), repeated or
    invisible label names, a corrupt tensor header (`inspect` said exit 0), a NaN metric printed as non-JSON, booleans
    and 0.5 read as labels and rows, texts of only zero-width or control characters, "0_5" read as the score 5.0."""

    def edit_config(change):
        def setup(ws):
            path = ws.fixture("adapter_sst2") / "adapter_config.json"
            path.write_text(json.dumps(change(json.loads(path.read_text()))))
        return setup

    def edit_header(change):
        def setup(ws):
            path = ws.fixture("adapter_sst2") / "adapter.safetensors"
            payload = path.read_bytes()
            length = int.from_bytes(payload[:8], "little")
            header = json.loads(payload[8 : 8 + length])
            tensor = header[next(k for k in sorted(header) if k != "__metadata__")]
            raw = change(header, tensor)
            raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
            path.write_bytes(len(raw).to_bytes(8, "little") + raw + payload[8 + length :])
        return setup

    def ins(id, setup, expect):
        case(id, "inspect", ["inspect", "--adapter", "{adapter_sst2}"], expect, setup)

    ins("config-empty-object", edit_config(lambda c: {}), ("missing keys", "lora_alpha"))
    ins("config-without-lora-alpha", edit_config(lambda c: {k: v for k, v in c.items() if k != "lora_alpha"}),
        "lora_alpha")
    ins("config-label-names-repeated", edit_config(lambda c: c | {"label_names": ["positive", "positive"]}),
        "label_names")
    ins("config-label-name-zero-width", edit_config(lambda c: c | {"label_names": ["\u200b", "positive"]}),
        "label_names")
    ins("weights-header-not-json", edit_header(lambda h, t: b"{" + json.dumps(h).encode()[2:]), "adapter.safetensors")
    ins("weights-header-offsets-past-the-data", edit_header(lambda h, t: t.update(data_offsets=[0, 10**9]) or h),
        "adapter.safetensors")
    ins("weights-header-dtype-unknown", edit_header(lambda h, t: t.update(dtype="F33") or h), "adapter.safetensors")
    case("adapter-config-empty-object", "predict",
         ["predict", "--adapter", "{adapter_sst2}", "--model", "{model}", "--text", "a good film"], "missing keys",
         edit_config(lambda c: {}))

    def score(id, task, preds, lines, expect):
        case(id, "score", ["score", "--task", task, "--data", "{glue}", "--predictions", "{ws}/" + preds], expect,
             lambda ws: ws.write(preds, "".join(line + "\n" for line in lines)))

    def jsonl(values, index=lambda i: i):
        return [json.dumps({"index": index(i), "prediction": v}) for i, v in enumerate(values)]

    score("stsb-constant-predictions", "stsb", "preds.jsonl", jsonl([2.5] * 12), ("pearson", "constant"))
    score("glue-prediction-booleans", "sst2", "preds.jsonl", jsonl([i % 2 == 0 for i in range(12)]), "preds.jsonl:1")
    score("glue-index-half", "sst2", "preds.jsonl", jsonl([1] * 12, index=lambda i: i + 0.5), "preds.jsonl:1")
    score("glue-index-boolean", "sst2", "preds.jsonl", jsonl([1, 0], index=lambda i: i == 1), "preds.jsonl:1")
    score("stsb-prediction-underscore", "stsb", "preds.jsonl", jsonl(["1_5"] * 12), "preds.jsonl:1")
    score("stsb-prediction-nan-literal", "stsb", "preds.jsonl",
          [f'{{"index": {i}, "prediction": NaN}}' for i in range(12)], "preds.jsonl:1")
    score("glue-tsv-index-underscore", "sst2", "preds.tsv",
          ["index\tprediction"] + [f"{i}\tpositive" for i in range(9)] + ["1_0\tnegative"], "preds.tsv:11")

    def glue(id, task, row, col, value, expect):
        T(id, "glue_data", train(task=task, data="{ws}/bad"), expect, glue_bad(task, set_cell(row, col, value)))

    glue("sst2-zero-width-sentence", "sst2", 3, 0, "\u200b\u200b", "SST-2/train.tsv")
    glue("sst2-control-character-sentence", "sst2", 3, 0, "\x01\x07", "SST-2/train.tsv")
    glue("rte-word-joiner-sentence2", "rte", 3, 2, "\u2060", "RTE/train.tsv")
    glue("sst2-label-arabic-digit", "sst2", 3, 1, "\u0661", "SST-2/train.tsv")
    glue("sst2-label-superscript-digit", "sst2", 3, 1, "\u00b9", "SST-2/train.tsv")
    glue("stsb-score-underscore", "stsb", 3, 9, "0_5", "STS-B/train.tsv")
    glue("stsb-score-arabic-digit", "stsb", 3, 9, "\u0663", "STS-B/train.tsv")

    def squad(id, mutate):
        T(id, "squad_data", train(task="squad_v1", data="{ws}/bads"), "train-v1.1.json", squad_bad(mutate))

    squad("zero-width-question", lambda d: first_qa(d).update(question="\u200b\u200b"))
    squad("control-character-context", lambda d: d["data"][0]["paragraphs"][0].update(context="\x01\x02"))


# ============================================================================= --overwrite keeps what train did not write
def _overwrite_cases() -> None:
    """--overwrite deletes only a run's own files: a user's file or another run inside is refused (named), and
    nothing is deleted; a new run inside a run folder is refused; save_adapter (import-peft) refuses a checkpoint."""
    C = "overwrite"

    def in_run(*files: str, nested: str | None = None, legacy: bool = False):
        def setup(ws):
            run = ws.fixture("run_sst2")
            for name in files:
                ws.write(f"run_sst2/{name}", "my notes\n")
            if nested:
                ws.fixture("run_unfinished", as_name=f"run_sst2/{nested}")
            if legacy:  # a run of an earlier version: no marker, its config.json tells it
                (run / ".roberta-lora-run").unlink()
        return setup

    def ow(id, setup, expect, out="{run_sst2}", flags=("--overwrite",)):
        case(id, C, train(*flags, out=out), expect, setup)

    ow("user-notes-beside-the-run", in_run("notes.md"), "notes.md")
    ow("user-file-inside-the-final-adapter", in_run("adapter/my-eval.txt"), "adapter/my-eval.txt")
    ow("user-file-inside-the-checkpoint", in_run("checkpoint/keep.pt"), "checkpoint/keep.pt")
    ow("run-nested-inside", in_run(nested="nested"), ("another run folder", "nested"))
    ow("run-nested-inside-eval", in_run(nested="eval/old-run"), "eval/old-run")
    ow("legacy-run-with-user-notes", in_run("notes.md", legacy=True), "notes.md")
    ow("new-run-inside-a-run", None, "inside the run folder", out="{run_sst2}/nested", flags=())
    ow("new-run-inside-a-run-overwrite", None, "inside the run folder", out="{run_sst2}/eval/again")
    ow("new-run-inside-an-unfinished-run", None, "inside the run folder", out="{run_unfinished}/next", flags=())
    case("resume-inside-a-run", C, train("--resume", out="{run_sst2}/never_ran"), ("inside the run folder", "never_ran"))

    def checkpoint_with_adapter_file(ws):  # import-peft's --overwrite takes it for an earlier converted adapter
        folder = ws.fixture("model", as_name="mixed")
        shutil.copy2(ws.fixture("adapter_sst2") / "adapter.safetensors", folder / "adapter.safetensors")
    case("import-peft-into-a-model-checkpoint", C,
         ["import-peft", "--peft", "{peft_sst2}", "--output", "{ws}/mixed", "--model", "{model}", "--task", "sst2",
          "--overwrite"], ("model checkpoint", "mixed"), checkpoint_with_adapter_file)


for _build in (_glue_cases, _squad_cases, _same_file_cases, _flag_cases, _config_cases, _model_cases, _output_cases,
               _resume_cases, _evaluate_cases, _predict_cases, _score_cases, _merge_peft_cases, _train_all_cases,
               _small_command_cases, _cli_cases, _init_from_cases, _task_toml_cases,
               _silent_result_cases, _overwrite_cases):
    _build()

CATEGORIES = list(dict.fromkeys(c.category for c in CASES))

"""Load a task's splits (local files first, else the hub), summarise them, tokenize them.

Local files follow the original releases, found under `--data-dir`:
`<data_dir>/<TASK_DIR>/train.tsv` and `dev.tsv` for GLUE (TASK_DIR = CoLA, SST-2, MRPC,
STS-B, QQP, MNLI, QNLI, RTE, WNLI), `<data_dir>/squad/dev-v1.1.json` for SQuAD. `data_dir`
may also be the task folder itself, a parent holding `glue/` or `glue_data/`, or one file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roberta_lora.choices import has_visible_text
from roberta_lora.data.glue_files import (
    GLUE_LAYOUT_HELP,
    parse_label,
    parse_score,
    read_glue_tsv,
    read_text_file,
)
from roberta_lora.data.squad_files import read_squad_file
from roberta_lora.data.tasks import TaskSpec
from roberta_lora.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

CACHE_ENV = "ROBERTA_LORA_CACHE"
CACHE_FORMAT = 1  # bump when the tokenized layout changes, so old cache entries are not reused
TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def split_names(spec: TaskSpec) -> tuple[str, ...]:
    """"train" followed by the task's validation splits (e.g. MNLI's matched and mismatched)."""
    return spec.splits


def _check_split(spec: TaskSpec, split: str) -> None:
    if split not in spec.splits:
        raise ConfigError(f"task {spec.name!r} has no split {split!r}; expected one of {list(spec.splits)}.")


def _expected_files(spec: TaskSpec) -> str:
    return ", ".join(f"<data_dir>/{rel}" for rel in spec.local_files.values()) or "(the task lists no local files)"


def resolve_local_file(spec: TaskSpec, split: str, data_dir: str | Path) -> Path:
    """Find the local file of `split` under `data_dir` (see the module docstring for the layouts).

    Raises:
        ConfigError: the task lists no local file for the split.
        DataError: no candidate exists; lists the paths tried and the expected layout.
    """
    _check_split(spec, split)
    data_dir = Path(data_dir).expanduser()
    if split not in spec.local_files:
        raise ConfigError(
            f"task {spec.name!r} names no local file for split {split!r}; add it under [local_files] in "
            f"{spec.source_path}."
        )
    rel = Path(spec.local_files[split])
    if data_dir.is_file():
        # Guard against training on the dev file (or the reverse) when one file is given for all splits.
        other = [s for s, r in spec.local_files.items() if s != split and Path(r).name == data_dir.name]
        if other:
            raise DataError(
                f"this is the {other[0]!r} file of {spec.name}, not the {split!r} one; pass a folder holding "
                f"{_expected_files(spec)}, or the {split!r} file itself.",
                str(data_dir),
            )
        return data_dir
    candidates = [data_dir / rel, data_dir / "glue" / rel, data_dir / "glue_data" / rel, data_dir / rel.name]
    if spec.local_format == "table":  # e.g. imdb/train.csv may also come as imdb/train.jsonl
        candidates += [c.with_suffix(s) for c in list(candidates) for s in TABLE_SUFFIXES]
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
    layout = GLUE_LAYOUT_HELP if spec.local_format == "glue_tsv" else ""
    raise DataError(
        f"no {spec.name} {split!r} file found; tried {', '.join(map(str, dict.fromkeys(candidates)))}. "
        f"The folder holds: {', '.join(present) or '(nothing / missing)'}. Expected {_expected_files(spec)}. "
        + layout,
        str(data_dir),
    )


def check_local_files(spec: TaskSpec, data_dir: str | Path, splits: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Every split's local file, found before any work starts; a validation split may not be the train
    file, a link to it or a copy of it (metrics measured on the training data would look like validation).

    Raises:
        DataError / ConfigError: as `resolve_local_file`, or naming the file two splits would share.
    """
    files = {split: resolve_local_file(spec, split, data_dir) for split in splits or spec.splits}
    train = files.get("train")
    for split, path in files.items():
        if train is not None and split != "train" and _same_data(path, train):
            raise DataError(
                f"holds the same data as the train file {train} (a link or a copy), so {spec.name}'s {split!r} "
                f"metrics would be measured on training data; pass a folder holding {_expected_files(spec)} with "
                "each split's own file", str(path))
    return files


def _same_data(a: Path, b: Path) -> bool:
    """One file (a symlink or hard link) or two files with identical bytes."""
    if os.path.samefile(a, b):
        return True
    if a.stat().st_size != b.stat().st_size:
        return False
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def read_local_file(spec: TaskSpec, path: str | Path) -> datasets.Dataset:
    """Read one local data file in the task's format ("glue_tsv", "squad" or "table")."""
    if spec.local_format == "glue_tsv":
        assert spec.glue_layout is not None  # tasks.py sets it for every glue_tsv task
        return read_glue_tsv(path, spec.glue_layout, spec.label_names, spec.score_range)
    if spec.local_format == "squad":
        return read_squad_file(path, spec.squad_version)
    return _read_table(spec, Path(path))


def load_split(spec: TaskSpec, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Load one split as a `datasets.Dataset` with the hub's columns.

    Args:
        spec: the task.
        split: "train" or one of `spec.validation_splits`.
        data_dir: folder with the original files (or one file); None tries the Hugging Face hub.

    Raises:
        ConfigError: unknown split, or the hub is unreachable (names `--data-dir`).
        DataError: a missing or malformed local file (names file and line).
    """
    _check_split(spec, split)
    if data_dir is not None:
        return read_local_file(spec, resolve_local_file(spec, split, data_dir))
    return _load_from_hub(spec, split)


def _load_from_hub(spec: TaskSpec, split: str) -> datasets.Dataset:
    fix = f"pass --data-dir (data_dir=...) pointing at a folder with {_expected_files(spec)}."
    if spec.hub_path is None:
        raise ConfigError(f"task {spec.name!r} has no hub dataset (hub_path); {fix}")
    import datasets

    from roberta_lora.hub import hub_reachable

    if not hub_reachable():
        raise ConfigError(f"the Hugging Face hub is not reachable (offline?), so {spec.hub_path} cannot be "
                          f"downloaded; {fix}")
    try:
        dataset = datasets.load_dataset(spec.hub_path, spec.hub_config, split=split)
    except Exception as err:  # offline, unknown id, gated...: all mean "use local files instead"
        name = spec.hub_path + (f"/{spec.hub_config}" if spec.hub_config else "")
        raise ConfigError(
            f"could not load split {split!r} of {name} from the Hugging Face hub "
            f"({type(err).__name__}: {str(err)[:300]}). Without network access, {fix}"
        ) from err
    missing = [c for c in (*spec.text_columns, spec.label_column) if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"hub dataset {spec.hub_path} split {split!r} lacks column(s) {missing}; it has {dataset.column_names}. "
            f"Fix text_columns / label_column in {spec.source_path}."
        )
    return dataset


def _read_table(spec: TaskSpec, path: Path) -> datasets.Dataset:
    """Read a csv (with a header), jsonl or parquet file holding the hub's column names."""
    import datasets

    wanted = [*spec.text_columns, spec.label_column]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: list[tuple[int | None, dict]] = [(None, r) for r in pq.read_table(path).to_pylist()]
    elif path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text_file(path), newline=""))
        rows = [(reader.line_num, row) for row in reader]
    else:
        rows = []
        for n, line in enumerate(read_text_file(path).split("\n"), start=1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"not a JSON object: {err.msg}; expected one row per line.", str(path), n) from err
    columns: dict[str, list] = {name: [] for name in wanted}
    for n, (line, row) in enumerate(rows):
        line = line if line is not None else n + 1
        absent = [c for c in wanted if not isinstance(row, dict) or row.get(c) is None]
        if absent:
            raise DataError(f"missing column(s) {absent}; expected {wanted}.", str(path), line)
        for name in spec.text_columns:
            text = str(row[name])
            if not has_visible_text(text):  # empty, blank, or only control / zero-width characters
                shown = f" (it holds only {text!r:.60}: whitespace, control or zero-width characters)" if text else ""
                raise DataError(f"empty {name!r} text{shown}; remove the row or fill in the text.", str(path), line)
            columns[name].append(text)
        value = str(row[spec.label_column])
        columns[spec.label_column].append(
            parse_score(value, spec.score_range, path, line)
            if spec.kind == "regression"
            else parse_label(value, spec.label_names, path, line)
        )
    if not rows:
        raise DataError(f"no rows; expected columns {wanted}.", str(path))
    label = datasets.Value("float32") if spec.kind == "regression" else datasets.ClassLabel(names=list(spec.label_names))
    features = {name: datasets.Value("string") for name in spec.text_columns} | {spec.label_column: label}
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def data_info(spec: TaskSpec, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Summarise every available split (JSON-serialisable), for `roberta-lora data-info`.

    Per split: rows plus the label distribution by name (classification), score
    min/max/mean (regression), or question/answerable/unanswerable counts (SQuAD).
    Splits whose file is absent (or hub unreachable) are listed under "missing" with why.
    Malformed files still raise DataError.
    """
    source = str(Path(data_dir).expanduser()) if data_dir is not None else f"hub:{spec.hub_path}"
    info: dict[str, Any] = {"task": spec.name, "kind": spec.kind, "source": source, "splits": {}, "missing": {}}
    for split in spec.splits:
        try:  # only "not there" is tolerated here; a malformed file below still raises
            if data_dir is not None:
                path: Path | None = resolve_local_file(spec, split, data_dir)
            else:
                path, hub_dataset = None, _load_from_hub(spec, split)
        except (ConfigError, DataError) as err:
            info["missing"][split] = str(err)
            continue
        dataset = read_local_file(spec, path) if path is not None else hub_dataset
        file = str(path) if path is not None else None
        info["splits"][split] = {"file": file, **_summary(spec, dataset)}
    return info


def _summary(spec: TaskSpec, dataset: datasets.Dataset) -> dict[str, Any]:
    if spec.kind == "squad":
        answerable = sum(1 for answers in dataset["answers"] if answers["text"])
        return {"questions": len(dataset), "answerable": answerable, "unanswerable": len(dataset) - answerable,
                "articles": len(set(dataset["title"]))}
    labels = dataset[spec.label_column]
    if spec.kind == "regression":
        return {"rows": len(dataset), "score": {"min": float(min(labels)), "max": float(max(labels)),
                                                "mean": round(float(sum(labels)) / len(labels), 4)}}
    counts = {name: 0 for name in spec.label_names}
    for label in labels:
        counts[spec.label_names[label]] += 1
    return {"rows": len(dataset), "labels": counts}


def default_cache_dir() -> Path:
    """`$ROBERTA_LORA_CACHE/tokenized`, else `~/.cache/roberta_lora/tokenized`."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "roberta_lora") / "tokenized"


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer's output: name, class, vocabulary (hashed) and truncation side."""
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    return {"tokenizer": tokenizer.name_or_path, "tokenizer_class": type(tokenizer).__name__,
            "vocab_size": tokenizer.vocab_size, "len": len(tokenizer), "vocab": vocab,
            "truncation_side": getattr(tokenizer, "truncation_side", None)}


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """Content-based for in-memory datasets, file-based for hub ones."""
    from datasets.fingerprint import Hasher

    return getattr(dataset, "_fingerprint", None) or Hasher.hash(dataset.to_dict())


def cached_dataset(root: Path, key: dict[str, Any], build: Callable[[], datasets.Dataset], what: str) -> datasets.Dataset:
    """Load the dataset saved under a hash of `key` in `root`, or build it and save it.

    The new entry is written to a temporary folder and renamed, so an interrupted run never
    leaves a half cache; when two processes build the same entry, the second copy is dropped.
    """
    import datasets

    target = Path(root) / hashlib.sha256(
        json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True, default=str).encode()).hexdigest()[:24]
    if target.is_dir():
        logger.info("loading %s from cache %s", what, target)
        try:
            return datasets.load_from_disk(str(target))
        except Exception as error:  # noqa: BLE001 - arrow, JSON and OS errors alike mean a damaged entry
            logger.warning("the %s cache entry %s is damaged (%s: %s); rebuilding it", what, target,
                           type(error).__name__, str(error)[:200])
            shutil.rmtree(target, ignore_errors=True)
    built = build()
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        built.save_to_disk(str(tmp))
    except OSError as error:  # a cache is an optimisation: carry on without it, but say why
        shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("cannot write the %s cache under %s (%s); continuing without a cache "
                       "(choose a writable --cache-dir or $ROBERTA_LORA_CACHE)", what, target.parent, error)
        return built
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same entry first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def tokenize_classification(
    dataset: datasets.Dataset,
    spec: TaskSpec,
    tokenizer: Any,
    max_length: int | None = None,
    cache_dir: Path | None = None,
) -> datasets.Dataset:
    """Tokenize a classification/regression split, with an on-disk cache.

    Produces `input_ids`, `attention_mask`, `labels` (int64, or float32 for regression) and
    keeps `idx` when present. Texts are truncated to `max_length` (default `spec.max_length`)
    and NOT padded: `make_collator` pads each batch to its longest example.

    The result is saved under `cache_dir` (default `default_cache_dir()`) keyed by the
    dataset fingerprint, the tokenizer (name, class, vocabulary), max_length and columns,
    so a second call loads it without running the tokenizer.
    """
    import datasets

    if spec.kind == "squad":
        raise ConfigError("tokenize_classification does not handle SQuAD; use roberta_lora.squad.prepare_*_features.")
    needed = [*spec.text_columns, spec.label_column]
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise ConfigError(f"dataset lacks column(s) {missing} needed by task {spec.name!r}; it has {dataset.column_names}.")
    max_length = max_length or spec.max_length
    segments = "token_type_ids" in tokenizer.model_input_names  # BERT's tokenizers; RoBERTa's and DistilBERT's: no

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[c] for c in spec.text_columns]  # one list, or two for a sentence pair
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                   "labels": batch[spec.label_column]}
        if segments:
            columns["token_type_ids"] = encoded["token_type_ids"]
        return columns

    label_type = "float32" if spec.kind == "regression" else "int64"
    features = datasets.Features(
        {"input_ids": datasets.List(datasets.Value("int32")), "attention_mask": datasets.List(datasets.Value("int8")),
         "labels": datasets.Value(label_type)}
        | ({"token_type_ids": datasets.List(datasets.Value("int8"))} if segments else {})
        | ({"idx": dataset.features["idx"]} if "idx" in dataset.column_names else {})
    )
    key = {"dataset": dataset_fingerprint(dataset), **tokenizer_fingerprint(tokenizer), "max_length": max_length,
           "text_columns": spec.text_columns, "label_column": spec.label_column, "kind": spec.kind,
           **({"token_type_ids": True} if segments else {})}
    return cached_dataset(
        Path(cache_dir) if cache_dir is not None else default_cache_dir(), key,
        lambda: dataset.map(
            encode, batched=True, remove_columns=[c for c in dataset.column_names if c != "idx"],
            features=features, keep_in_memory=True, load_from_cache_file=False, desc=f"Tokenizing {spec.name}",
        ),
        f"tokenized {spec.name}",
    )


def make_collator(tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
    """Dynamic padding per batch (`DataCollatorWithPadding`); e.g. pad_to_multiple_of=8 for tensor cores."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

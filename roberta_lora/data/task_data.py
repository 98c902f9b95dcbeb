"""From a task and a tokenizer to model-ready datasets and data loaders.

GLUE-style tasks tokenize one example into one row (`data.tokenize_classification`, cached).
SQuAD cuts each question into overlapping windows (`squad.prepare_*_features`, cached here the
same way). Training batches group examples of similar length, so less padding is computed;
evaluation runs longest-first and every output carries its row index, so predictions are
put back in dataset order whatever the batching.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, Sampler

from roberta_lora.data.readers import (
    cached_dataset,
    dataset_fingerprint,
    default_cache_dir,
    load_split,
    make_collator,
    tokenize_classification,
    tokenizer_fingerprint,
)
from roberta_lora.data.squad_features import prepare_eval_features, prepare_train_features
from roberta_lora.data.tasks import TaskSpec

logger = logging.getLogger(__name__)

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions", "row_index")


@dataclass
class EvalSplit:
    """One validation split: the raw examples (for SQuAD answers and predictions) and the model inputs."""

    name: str
    examples: datasets.Dataset
    features: datasets.Dataset  # one row per example, or per window for SQuAD


@dataclass
class TaskData:
    spec: TaskSpec
    train: datasets.Dataset | None
    eval_splits: list[EvalSplit]


def load_task_data(
    spec: TaskSpec,
    tokenizer: Any,
    data_dir: str | Path | None,
    *,
    with_train: bool = True,
    max_length: int | None = None,
    doc_stride: int | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    cache_dir: str | Path | None = None,
) -> TaskData:
    """Read and tokenize the task's train split (optional) and every validation split."""
    max_length = max_length or spec.max_length
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    train = None
    if with_train:
        raw = _first(load_split(spec, "train", data_dir), max_train_samples)
        train = _features(spec, raw, tokenizer, max_length, doc_stride, cache, training=True)
    eval_splits = []
    for split in spec.validation_splits:
        raw = _first(load_split(spec, split, data_dir), max_eval_samples)
        eval_splits.append(EvalSplit(split, raw, _features(spec, raw, tokenizer, max_length, doc_stride, cache, False)))
    return TaskData(spec, train, eval_splits)


def _first(dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def _features(
    spec: TaskSpec, raw: datasets.Dataset, tokenizer: Any, max_length: int, doc_stride: int | None,
    cache: Path, training: bool,
) -> datasets.Dataset:
    if spec.kind != "squad":
        return tokenize_classification(raw, spec, tokenizer, max_length=max_length, cache_dir=cache)
    stride = doc_stride or spec.doc_stride or 128
    prepare = prepare_train_features if training else prepare_eval_features
    key = {"kind": "squad-train" if training else "squad-eval", "dataset": dataset_fingerprint(raw),
           **tokenizer_fingerprint(tokenizer), "max_length": max_length, "stride": stride,
           **({"token_type_ids": True} if "token_type_ids" in tokenizer.model_input_names else {})}
    return cached_dataset(
        cache, key,
        lambda: raw.map(
            lambda batch: prepare(batch, tokenizer, max_length=max_length, doc_stride=stride),
            batched=True, remove_columns=raw.column_names, keep_in_memory=True, load_from_cache_file=False,
            desc=f"Windowing {spec.name} ({'train' if training else 'eval'})",
        ),
        f"{spec.name} windows",
    )


class LengthGroupedSampler(Sampler[list[int]]):
    """Batches of similar-length examples in a random order that depends only on (seed, epoch).

    Shuffle all indices, cut them into chunks of 50 batches, sort each chunk by length and cut
    it into batches, then shuffle the batches. Every example is seen once per epoch, padding
    shrinks, and a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: bool = True) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.drop_last = False  # read by accelerate when it shards batches across processes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if not self.group:
            yield from (order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size))
            return
        chunk = self.batch_size * 50
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: -self.lengths[i])
            batches.extend(part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size))
        for position in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[position]

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


def model_inputs(features: datasets.Dataset) -> datasets.Dataset:
    """Only the columns the model and the collator need, plus `row_index` to restore order."""
    keep = [c for c in features.column_names if c in MODEL_COLUMNS]
    trimmed = features.select_columns(keep)
    return trimmed.add_column("row_index", list(range(len(trimmed))))


def train_loader(features: datasets.Dataset, tokenizer: Any, batch_size: int, seed: int, group_by_length: bool,
                 num_workers: int = 0) -> tuple[DataLoader, LengthGroupedSampler]:
    lengths = [len(ids) for ids in features["input_ids"]]
    sampler = LengthGroupedSampler(lengths, batch_size, seed, group=group_by_length)
    loader = DataLoader(model_inputs(features).remove_columns("row_index"), batch_sampler=sampler,
                        collate_fn=make_collator(tokenizer), num_workers=num_workers)
    return loader, sampler


def eval_loader(features: datasets.Dataset, tokenizer: Any, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Longest first (least padding, and the memory peak comes at once); outputs carry row_index."""
    lengths = [len(ids) for ids in features["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = FixedBatches([order[i : i + batch_size] for i in range(0, len(order), batch_size)], batch_size)
    return DataLoader(model_inputs(features), batch_sampler=batches, collate_fn=make_collator(tokenizer),
                      num_workers=num_workers)


class FixedBatches(Sampler[list[int]]):
    """A fixed list of batches (what accelerate needs to shard them: batch_size, drop_last, len)."""

    def __init__(self, batches: list[list[int]], batch_size: int) -> None:
        self.batches = batches
        self.batch_size = batch_size
        self.drop_last = False

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches

    def __len__(self) -> int:
        return len(self.batches)

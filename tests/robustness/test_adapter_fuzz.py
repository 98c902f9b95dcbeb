"""Adapter files are untrusted input: a seeded fuzz of more than 1,000 mutated adapter folders.

Every case copies a valid adapter, mutates it (truncation, flipped bits in the config, the
safetensors header and the data, wrong dtypes and shapes, huge declared sizes and offsets,
extra / missing / renamed tensors, non-finite values, invalid JSON, wrong task types, missing
files, pickles) and loads it, mostly with `load_adapter` on one prebuilt model (fast) and every
tenth case with `LoraWrapperRoberta.from_adapter`. Each case must end, within a second, in one of:

* refused: a `RobertaLoraError` (nearly always `AdapterError`, naming the folder); a refused
  `load_adapter` leaves the model's tensors untouched;
* accepted, same content: what loads equals the original adapter exactly (e.g. a flip that only
  moves JSON whitespace, a removed digest, a pickle lying next to the files, which is ignored);
* accepted, hand edit: the tensors are the original ones (the config's weights_sha256 vouches for
  them) and the config changed only in fields a user may edit by hand without changing what the
  adapter computes (EDITABLE below);
* accepted, unsigned weights: with the digest removed or recomputed (a stranger's hand-made
  file) the data bytes are whatever the stranger wrote; they must still be finite floats of the
  right names and shapes, and exactly those values load.

Anything else (another exception type, a hang, an allocation beyond 1 GiB, a pickle executed)
fails the test. The summary table is printed (run with `-s` to see it).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save

from roberta_lora.errors import AdapterError, RobertaLoraError
from roberta_lora.model.config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, read_adapter_config
from roberta_lora.model.wrapper import LoraWrapperRoberta

from .helpers import (
    CaseTimeout,
    address_space_headroom,
    join_safetensors,
    peak_rss_bytes,
    split_safetensors,
    watchdog,
)

SEED = 6
MIN_CASES = 1000
PER_CASE_LIMIT_S = 1.0
FROM_ADAPTER_EVERY = 10
# Config fields a user may edit by hand: descriptive, or used only when training / tokenizing.
EDITABLE = {"metrics", "task", "package_version", "base_model", "label_names", "max_length", "doc_stride",
            "lora_dropout", "head_dropout"}
# A JSON value of every wrong kind, for every field.
BAD_VALUES = [None, True, False, -1, 0, 3, 2**31, 10**30, -0.5, 0.5, 1e308, float("nan"), float("inf"), "", "x" * 10_000,
              "8", "glue", [], [1, 2], ["query", "querz"], {}, {"a": 1}, "\ud800", ["\udc80"]]
STRUCTURAL_CHANGES = [
    {"task_type": "squad_v1"}, {"task_type": "squad_v2", "num_classes": 2, "label_names": []},
    {"task_type": "GLUE"}, {"task_type": "translation"}, {"num_classes": 1, "label_names": []},
    {"num_classes": 3, "label_names": ["a", "b", "c"]}, {"num_classes": 3}, {"method": "head"}, {"method": "full"},
    {"head": "roberta"}, {"targets": ["query", "key", "value"]}, {"targets": "all-linear"}, {"targets": []},
    {"lora_rank": 4}, {"lora_rank": 10**6}, {"lora_alpha": 16.0}, {"lora_alpha": 8.5}, {"train_biases": False},
    {"train_layer_norms": False}, {"train_embeddings": True}, {"num_classes": 10**6, "label_names": []},
    {"base_fingerprint": "0" * 16}, {"format_version": 2}, {"format_version": 0},
    {"label_names": ["neg", "pos"]}, {"task": "mnli"}, {"max_length": 64}, {"base_fingerprint": None},
]
DTYPES = ["F16", "BF16", "F64", "I32", "I64", "U8", "I8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "C64",
          "U64", "XYZ", "", None, 32]
ELEMENT_BYTES = {"F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "I8": 1, "BOOL": 1, "F8_E4M3": 1,
                 "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8, "U64": 8}


@dataclass
class Original:
    directory: Path
    config: dict  # adapter_config.json as JSON, weights_sha256 included
    config_bytes: bytes
    weights: bytes
    header: dict
    data: bytes
    tensors: dict[str, torch.Tensor]
    parsed: AdapterConfig


@dataclass
class Case:
    kind: str
    config: bytes | None  # None: the file is absent
    weights: bytes | None
    setup: Callable[[Path], None] | None = None  # extra filesystem tricks, run after the files are written


def encode(config: dict) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def flip_bits(data: bytes, rng: random.Random, start: int, end: int, count: int) -> bytes:
    mutable = bytearray(data)
    for _ in range(count):
        mutable[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
    return bytes(mutable)


# ----------------------------------------------------------------------------- config mutations
def config_cases(rng: random.Random, orig: Original) -> Iterator[Case]:
    text, weights = orig.config_bytes, orig.weights
    for _ in range(60):
        yield Case("config.truncate", text[: rng.randrange(len(text))], weights)
    for _ in range(150):
        yield Case("config.bit_flip", flip_bits(text, rng, 0, len(text), rng.randint(1, 3)), weights)
    for _ in range(60):
        at = rng.randrange(len(text))
        yield Case("config.byte_replace", text[:at] + bytes([rng.choice(b'"{}[],:\\\0\xff 0e-')]) + text[at + 1 :], weights)
    garbage = [b"", b" ", b"null", b"[]", b'"adapter"', b"8", b"\xff\xfe{}", b"\xef\xbb\xbf" + text, b"[" * 100_000,
               b'{"a":' * 50_000, b"{" + b" " * (1 << 20) + b"}", b'{"lora_alpha": NaN}', b'{"lora_alpha": Infinity}',
               b'{"lora_rank": ' + b"9" * 5000 + b"}", text.replace(b'"lora_rank": 8', b'"lora_rank": 8, "lora_rank": 9'),
               pickle.dumps({"task_type": "glue"})] + [rng.randbytes(rng.randrange(1, 2000)) for _ in range(24)]
    for payload in garbage:
        yield Case("config.garbage", payload, weights)
    for _ in range(200):
        field, value = rng.choice(sorted(orig.config)), rng.choice(BAD_VALUES)
        yield Case("config.wrong_value", encode({**orig.config, field: value}), weights)
    for name in ["evil", "__class__", "lora_rank ", "LORA_RANK", "weights_sha", "", "\u0000", "x" * 1000] * 2:
        yield Case("config.extra_key", encode({**orig.config, name: 1}), weights)
    for key in sorted(orig.config) * 2:
        yield Case("config.missing_key", encode({k: v for k, v in orig.config.items() if k != key}), weights)
    for change in STRUCTURAL_CHANGES:
        yield Case("config.wrong_task", encode({**orig.config, **change}), weights)
    for digest in [None, "", "0" * 64, 12, ["x"], orig.config["weights_sha256"].upper()]:
        yield Case("config.digest", encode({**orig.config, "weights_sha256": digest}), weights)


# ----------------------------------------------------------------------------- tensor-file mutations
def weights_cases(rng: random.Random, orig: Original) -> Iterator[tuple[str, bytes]]:
    """(kind, mutated adapter.safetensors bytes); `signed` below decides what the config says about them."""
    payload, header, data = orig.weights, orig.header, orig.data
    length = len(payload) - len(data) - 8
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(80):
        yield "weights.truncate", payload[: rng.randrange(len(payload))]
    for _ in range(100):
        yield "weights.flip_header", flip_bits(payload, rng, 8, 8 + length, rng.randint(1, 3))
    for _ in range(80):
        yield "weights.flip_data", flip_bits(payload, rng, 8 + length, len(payload), rng.randint(1, 3))
    for _ in range(30):
        yield "weights.flip_length_field", flip_bits(payload, rng, 0, 8, 1)
    for declared in [0, 1, 7, length - 1, length + 1, len(payload), 2**31, 2**40, 2**63, 2**64 - 1]:
        yield "weights.huge_header_length", join_safetensors(header, data, length=declared)
    for _ in range(40):
        name = rng.choice(names)
        begin, end = header[name]["data_offsets"]
        offsets = rng.choice([[0, 2**40], [2**40, 2**40 + end - begin], [len(data), len(data) + 8], [begin, end - 1],
                              [end, begin], [0, end - begin], [-1, end], [0.5, end], ["0", end], [begin], [], None])
        yield "weights.bad_offsets", join_safetensors({**header, name: {**header[name], "data_offsets": offsets}}, data)
    for _ in range(40):
        name = rng.choice(names)
        shape = header[name]["shape"]
        numel = int(torch.tensor(shape).prod())
        new = rng.choice([s for s in [[2**31, 2**31], [2**62, 2**62], [0, 2**62], [], list(reversed(shape)), [numel],
                                      [1, *shape], [numel * 2], [-1], None, "8", [numel, 0]] if s != shape])
        yield "weights.bad_shape", join_safetensors({**header, name: {**header[name], "shape": new}}, data)
    for _ in range(40):
        name, dtype = rng.choice(names), rng.choice(DTYPES)
        begin, end = header[name]["data_offsets"]
        size = ELEMENT_BYTES.get(dtype) if isinstance(dtype, str) else None
        # Keep the byte count consistent where possible, so the dtype check itself is reached.
        shape = [(end - begin) // size] if size and (end - begin) % size == 0 else header[name]["shape"]
        yield "weights.bad_dtype", join_safetensors({**header, name: {**header[name], "dtype": dtype, "shape": shape}},
                                                    data)
    for _ in range(15):
        extra = rng.choice(["surprise", "classifier.extra.weight", names[0] + "_", "roberta.pooler.dense.weight"])
        yield "weights.extra_tensor", save({**orig.tensors, extra: torch.zeros(rng.randint(1, 64))}, {"format": "pt"})
    for _ in range(15):
        dropped = rng.choice(names)
        yield "weights.missing_tensor", save({k: v for k, v in orig.tensors.items() if k != dropped}, {"format": "pt"})
    for _ in range(15):
        old = rng.choice(names)
        new = rng.choice([old + "_", old.upper(), old.replace(".", "_", 1), "roberta." + old, old.replace("0", "1")])
        yield "weights.renamed_tensor", save({(new if k == old else k): v for k, v in orig.tensors.items()})
    same_shape = [(a, b) for a in names for b in names if a < b and orig.tensors[a].shape == orig.tensors[b].shape]
    for _ in range(15):  # right names and shapes, wrong places: only a digest can tell
        a, b = rng.choice(same_shape)
        yield "weights.swapped_tensors", save({**orig.tensors, a: orig.tensors[b], b: orig.tensors[a]})
    for _ in range(15):
        name = rng.choice(names)
        broken = {k: v.clone() for k, v in orig.tensors.items()}
        broken[name].view(-1)[rng.randrange(broken[name].numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
        yield "weights.non_finite", save(broken, dict(header["__metadata__"]))
    for _ in range(10):
        name = rng.choice(names)
        yield "weights.wrong_tensor_dtype", save({**orig.tensors, name: orig.tensors[name].to(torch.int32)})
    for metadata in [{"format": 1}, ["pt"], "pt", {"lora_alpha": "9.0"}, {"lora_alpha": "nan"}, {"lora_alpha": "x"},
                     {"a": "x" * 100_000}, None]:
        yield "weights.metadata", join_safetensors({**header, "__metadata__": metadata}, data)
    evil = Evil(orig.directory.parent / "PICKLE-EXECUTED")
    for blob in [b"", b"\0" * 8, rng.randbytes(100), rng.randbytes(20_000), pickle.dumps(evil), pickle.dumps(evil) * 50,
                 torch_save_bytes(orig.tensors), b"PK\x03\x04" + rng.randbytes(200)]:
        yield "weights.garbage", blob
    for _ in range(10):
        rank = rng.choice([2, 4, 16])  # the same adapter at another rank: every LoRA factor has the wrong shape
        other = {k: (v.repeat(2, 1)[:rank] if "lora_A" in k else v.repeat(1, 2)[:, :rank]) if "lora_" in k else v
                 for k, v in orig.tensors.items()}
        yield "weights.other_rank", save({k: v.contiguous() for k, v in other.items()})


class Evil:
    """Unpickling this creates a marker file: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_save_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def signed(rng: random.Random, orig: Original, kind: str, weights: bytes) -> Case:
    """Pair mutated tensors with a config that keeps the old digest, drops it, or vouches for the new bytes."""
    mode = rng.choice(["digest kept", "no digest", "no digest", "digest recomputed"])
    config = {k: v for k, v in orig.config.items() if k != "weights_sha256"}
    if mode == "digest kept":
        config["weights_sha256"] = orig.config["weights_sha256"]
    elif mode == "digest recomputed":
        config["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    return Case(f"{kind} ({mode})", encode(config), weights)


# ----------------------------------------------------------------------------- folder tricks
def file_cases(orig: Original) -> Iterator[Case]:
    c, w = orig.config_bytes, orig.weights
    evil = pickle.dumps(Evil(orig.directory.parent / "PICKLE-EXECUTED"))

    def pickles_beside(folder: Path) -> None:
        for name in ("pytorch_model.bin", "adapter_model.bin", "training_state.pt", "adapter.pt"):
            (folder / name).write_bytes(evil)

    def replace_with(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
        def setup(folder: Path) -> None:
            (folder / name).unlink(missing_ok=True)
            make(folder / name)
        return setup

    yield Case("files.missing_config", None, w)
    yield Case("files.missing_weights", c, None)
    yield Case("files.both_missing", None, None)
    yield Case("files.config_is_dir", c, w, replace_with(CONFIG_NAME, Path.mkdir))
    yield Case("files.weights_is_dir", c, w, replace_with(WEIGHTS_NAME, Path.mkdir))
    yield Case("files.weights_is_dev_zero", c, w, replace_with(WEIGHTS_NAME, lambda p: p.symlink_to("/dev/zero")))
    yield Case("files.config_is_dev_urandom", c, w, replace_with(CONFIG_NAME, lambda p: p.symlink_to("/dev/urandom")))
    yield Case("files.config_is_fifo", c, w, replace_with(CONFIG_NAME, lambda p: os.mkfifo(p)))
    yield Case("files.weights_is_fifo", c, w, replace_with(WEIGHTS_NAME, lambda p: os.mkfifo(p)))
    yield Case("files.dangling_symlink", c, w, replace_with(WEIGHTS_NAME, lambda p: p.symlink_to(p.parent / "nope")))
    yield Case("files.symlink_loop", c, w, replace_with(CONFIG_NAME, lambda p: p.symlink_to(p)))
    yield Case("files.pickles_beside", c, w, pickles_beside)
    yield Case("files.huge_sparse_config", c, w, replace_with(CONFIG_NAME, lambda p: os.truncate(_touch(p), 1 << 40)))


def _touch(path: Path) -> Path:
    path.touch()
    return path


def all_cases(orig: Original) -> list[Case]:
    rng = random.Random(SEED)
    cases = list(config_cases(rng, orig))
    cases += [signed(rng, orig, kind, weights) for kind, weights in weights_cases(rng, orig)]
    cases += list(file_cases(orig))
    return cases


# ----------------------------------------------------------------------------- running a case
def write_case(case: Case, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    if case.config is not None:
        (folder / CONFIG_NAME).write_bytes(case.config)
    if case.weights is not None:
        (folder / WEIGHTS_NAME).write_bytes(case.weights)
    if case.setup is not None:
        case.setup(folder)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)


def accepted_outcome(model: LoraWrapperRoberta, folder: Path, orig: Original) -> str:
    """Name an accepted case, or a "FAIL" line when accepting it was wrong."""
    file_tensors = load_file(folder / WEIGHTS_NAME)
    if not same_tensors(model.adapter_state_dict(), file_tensors):
        return "FAIL: the model does not hold the file's tensors"
    config, digest = read_adapter_config(folder)
    changed = {f.name for f in fields(AdapterConfig) if getattr(config, f.name) != getattr(orig.parsed, f.name)}
    changed -= {"base_fingerprint"} if config.base_fingerprint is None else set()  # absent: not checked, by design
    if not same_tensors(orig.tensors, file_tensors):
        if digest is not None and digest != hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest():
            return "FAIL: weights accepted against a wrong digest"
        if changed - EDITABLE:
            return f"FAIL: accepted with changed {sorted(changed - EDITABLE)}"
        if not all(torch.isfinite(t).all() for t in file_tensors.values()):
            return "FAIL: accepted NaN or infinite weights"
        return "accepted, unsigned weights"
    if not changed:
        return "accepted, same content"
    if changed <= EDITABLE:
        return "accepted, hand edit"
    return f"FAIL: accepted a config changed in {sorted(changed - EDITABLE)}"


def run_case(case: Case, folder: Path, model: LoraWrapperRoberta, orig: Original, build: bool) -> tuple[str, float]:
    write_case(case, folder)
    start = time.perf_counter()
    try:
        with watchdog(5.0):
            loaded = LoraWrapperRoberta.from_adapter(folder) if build else model
            if not build:
                model.load_adapter(folder)
        elapsed = time.perf_counter() - start
        outcome = accepted_outcome(loaded, folder, orig)
        if not build:
            model.load_adapter(orig.directory)  # back to the original for the next case
    except AdapterError as error:
        elapsed = time.perf_counter() - start
        outcome = "refused, AdapterError" if str(folder) in str(error) else f"FAIL: message lacks the folder: {error}"
        if not build and not same_tensors(model.adapter_state_dict(), orig.tensors):
            outcome = "FAIL: a refused load changed the model"
    except RobertaLoraError as error:
        elapsed = time.perf_counter() - start
        outcome = f"refused, {type(error).__name__}"
    except (Exception, CaseTimeout) as error:  # the finding: anything that is not the toolkit's own error
        elapsed = time.perf_counter() - start
        outcome = f"FAIL: {type(error).__name__}: {str(error)[:200]}"
    return outcome, elapsed


@pytest.fixture(scope="module")
def original(tiny_model_dir, tmp_path_factory) -> Original:
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=0, label_names=["negative", "positive"], task="sst2")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero LoRA B, so that flipped data bits change what the adapter computes
        for parameter in model.adapter_state_dict().values():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    directory = tmp_path_factory.mktemp("fuzz") / "original"
    model.save_adapter(directory, metrics={"accuracy": 0.5})
    weights = (directory / WEIGHTS_NAME).read_bytes()
    header, data = split_safetensors(weights)
    config_bytes = (directory / CONFIG_NAME).read_bytes()
    return Original(directory, json.loads(config_bytes), config_bytes, weights, header, data, load_bytes(weights),
                    read_adapter_config(directory)[0])


@pytest.fixture()
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar per from_adapter case."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def test_fuzzed_adapter_files_end_in_the_toolkits_error(original, tiny_model_dir, capsys, quiet_loading) -> None:
    cases = all_cases(original)
    assert len(cases) >= MIN_CASES
    model = LoraWrapperRoberta(model_id=str(tiny_model_dir), seed=3, label_names=["negative", "positive"]).eval()
    model.load_adapter(original.directory)
    folder = original.directory.parent / "case"
    table: dict[str, Counter] = defaultdict(Counter)
    failures, slowest = [], (0.0, "")
    rss_before = peak_rss_bytes()
    started = time.perf_counter()
    with address_space_headroom(1 << 30):  # any allocation beyond 1 GiB fails instead of succeeding slowly
        for number, case in enumerate(cases):
            outcome, elapsed = run_case(case, folder, model, original, build=number % FROM_ADAPTER_EVERY == 0)
            table[case.kind][outcome.split(":")[0]] += 1
            slowest = max(slowest, (elapsed, case.kind))
            if outcome.startswith("FAIL") or elapsed > PER_CASE_LIMIT_S:
                failures.append(f"case {number} {case.kind}: {outcome} ({elapsed:.3f} s)")
    total_s = time.perf_counter() - started
    outcomes = Counter(o for counts in table.values() for o in counts.elements())
    with capsys.disabled():
        print(f"\nadapter fuzz: {len(cases)} cases (seed {SEED}), {total_s:.1f} s, slowest case {slowest[0] * 1000:.0f} ms "
              f"({slowest[1]}), peak RSS +{(peak_rss_bytes() - rss_before) >> 20} MiB")
        for kind in sorted(table):
            print(f"  {kind:48s} " + ", ".join(f"{o}: {n}" for o, n in sorted(table[kind].items())))
        print("  total: " + ", ".join(f"{o}: {n}" for o, n in sorted(outcomes.items())))
    assert not (original.directory.parent / "PICKLE-EXECUTED").exists(), "a pickle was executed"
    assert not failures, "\n".join(failures[:30])
    assert outcomes["refused, AdapterError"] > 0.8 * len(cases), "the mutations should mostly break the adapter"

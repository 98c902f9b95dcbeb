"""Merged checkpoints on disk: `roberta-lora merge` and `load_merged`.

The standalone model of an adapter (`LoraWrapperRoberta.merge_and_unload`, see
`model.standalone`) is written as an ordinary checkpoint folder:

| adapter | directory written by `export_merged` |
|---|---|
| SQuAD v1/v2 | the family's `...ForQuestionAnswering` checkpoint (`RobertaForQuestionAnswering`, ...) + tokenizer |
| GLUE, "roberta" head | the family's `...ForSequenceClassification` checkpoint (`BertForSequenceClassification`, ...) + tokenizer |
| GLUE, light head | an encoder checkpoint (`RobertaModel.from_pretrained`, `BertModel...` loads it) + `light_head.safetensors` |
| GLUE, "roberta" head on DistilBERT | an encoder checkpoint + `roberta_head.safetensors` |

Every directory also gets `roberta_lora_merge.json` (what was merged, from which adapter);
`load_merged(dir)` reads any of them back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from roberta_lora._version import __version__
from roberta_lora.errors import AdapterError, ConfigError, first_line
from roberta_lora.fileio import atomic_write_json
from roberta_lora.model.families import checkpoint_family
from roberta_lora.model.standalone import HEAD_FILES, KINDS, MergedClassifier, merged_kind
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.sources import resolve_model

logger = logging.getLogger(__name__)

MERGE_INFO_NAME = "roberta_lora_merge.json"


def export_merged(model: LoraWrapperRoberta, output: str | Path, tokenizer_source: str | Path | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
    """Write the standalone form of the model's adapter to `output`; returns a summary.

    Files are written to a temporary sibling folder and renamed into place (the whole folder at
    once when `output` does not exist yet; else file by file, config.json last), so an
    interrupted export never leaves a half-written checkpoint. `tokenizer_source` (default: the
    adapter's base) is copied too, since transformers' pipelines need a tokenizer next to the model.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ConfigError(f"{output} exists and is not empty; choose a new --output or pass --overwrite")
    cfg = model.adapter_config
    standalone = model.merge_and_unload()
    kind = merged_kind(cfg, model.config.model_type)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        standalone.save_pretrained(tmp)
        tokenizer = _save_tokenizer(tokenizer_source or cfg.base_model, tmp)
        info = {"format": "roberta-lora-merged", "format_version": 1, "kind": kind, "task": cfg.task,
                "task_type": cfg.task_type, "num_classes": cfg.num_classes, "label_names": cfg.label_names,
                "head_dropout": cfg.head_dropout, "tokenizer": tokenizer, "adapter": asdict(cfg),
                "package_version": __version__}
        atomic_write_json(tmp / MERGE_INFO_NAME, info)
        files = sorted(p.name for p in tmp.iterdir())
        _publish(tmp, output, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"output": str(output), "kind": kind, "files": files, "tokenizer": tokenizer}


def _save_tokenizer(source: str | Path | None, directory: Path) -> str | None:
    if source is None:
        logger.warning("no tokenizer source known; the merged folder has no tokenizer (pass --model)")
        return None
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(resolve_model(str(source))).save_pretrained(directory)
    except (OSError, ValueError, ConfigError) as error:
        logger.warning("could not copy a tokenizer from %s (%s); the merged folder has none",
                       source, first_line(error, limit=None))
        return None
    return str(source)


def _publish(tmp: Path, output: Path, files: list[str]) -> None:
    if not output.exists():
        os.replace(tmp, output)  # one atomic step
        return
    # Weights and tokenizer first, then the files that describe them.
    for name in sorted(files, key=lambda n: (n in ("config.json", MERGE_INFO_NAME), n)):
        os.replace(tmp / name, output / name)
    for stale in HEAD_FILES.values():  # left by an earlier export of another kind
        if stale not in files:
            (output / stale).unlink(missing_ok=True)


def read_merge_info(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MERGE_INFO_NAME
    if not path.is_file():
        raise AdapterError(f"{path} is missing; `roberta-lora merge` writes it next to the merged checkpoint")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(info, dict) or info.get("kind") not in KINDS:
        raise AdapterError(f"{path}: expected a JSON object with kind in {list(KINDS)}")
    return info


def load_merged(directory: str | Path) -> nn.Module:
    """Load what `export_merged` wrote: the family's transformers model (from config.json's model_type), or a
    `MergedClassifier`."""
    info = read_merge_info(directory)
    if info["kind"] in ("light_head", "roberta_head"):
        return MergedClassifier.from_pretrained(directory, info.get("head_dropout", 0.1), info.get("label_names", []))
    family = checkpoint_family(directory)
    cls = family.question_answering if info["kind"] == "question_answering" else family.sequence_classification
    if cls is None:
        raise AdapterError(f"{directory} says kind {info['kind']!r}, which a {family.model_type} model has no "
                           "transformers class for; export it again with `roberta-lora merge`")
    return cls.from_pretrained(str(directory)).eval()

"""Share an adapter on the Hugging Face hub: its README.md as a hub model card, and the upload.

`hub_card` renders the card's YAML front matter with huggingface_hub's own `ModelCardData` (base model,
tags, datasets, license and a `model-index` with the validation metrics, which the hub shows as an
evaluation table) above the adapter's own README.md. `push_adapter` validates the folder, writes the
card into a temporary copy (the user's folder is never touched) and uploads the adapter files.
`sources.resolve_adapter("user/name")` downloads them again.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from roberta_lora.choices import GLUE_METRICS
from roberta_lora.errors import AdapterError, ConfigError, first_line
from roberta_lora.hub import hub_reachable
from roberta_lora.model.adapter_files import read_adapter_tensors
from roberta_lora.model.config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, read_adapter_config
from roberta_lora.sources import hub_errors, hub_model_id, is_repo_id

CARD_NAME = "README.md"
LIBRARY_NAME = "roberta-lora"


class CardDataset(NamedTuple):
    """The hub dataset a task's adapters are evaluated on (as in tasks/<task>.toml: hub_path, hub_config,
    validation_splits; tests/test_hub.py checks the two agree)."""

    repo_id: str
    config: str | None
    name: str  # shown on the hub's evaluation table
    splits: tuple[str, ...]  # the task's validation splits: metrics without a suffix belong to the first
    tag: str | None  # the benchmark family, a card tag


_GLUE = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")
TASK_DATASETS: dict[str, CardDataset] = {
    **{task: CardDataset("nyu-mll/glue", task, f"GLUE {task.upper()}",
                         ("validation_matched", "validation_mismatched") if task == "mnli" else ("validation",), "glue")
       for task in _GLUE},
    "squad_v1": CardDataset("rajpurkar/squad", None, "SQuAD v1.1", ("validation",), "squad"),
    "squad_v2": CardDataset("rajpurkar/squad_v2", None, "SQuAD v2.0", ("validation",), "squad"),
    "imdb": CardDataset("stanfordnlp/imdb", None, "IMDb", ("test",), None),
}
# Scores the model-index reports (counts such as "total" and the best_*_thresh settings are left out).
SQUAD_SCORES = ("exact_match", "exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")


def hub_card(adapter_dir: str | Path, repo_id: str | None = None, license: str | None = None,
             base_model: str | None = None) -> str:
    """The adapter's README.md as a hub model card: YAML front matter, then the card body (the folder's
    README.md without any front matter it had, else a short generated one).

    Args:
        adapter_dir: the adapter folder (adapter_config.json + adapter.safetensors).
        repo_id: the hub repo it goes to (`user/name`): names the model in the evaluation table and the
            download in the usage example.
        license: a hub license id (e.g. "mit", "apache-2.0"); none by default.
        base_model: the hub id of the base; default: the base recorded in the adapter when it is a hub id,
            a cached snapshot or a packaged model (a local folder gives none: pass its hub id here).

    Raises:
        AdapterError: the folder is not a valid adapter. ConfigError: base_model is not a hub id.
    """
    directory = Path(adapter_dir)
    config, _ = read_adapter_config(directory)
    front, base = _front_matter(config, repo_id, license, base_model)
    body = _existing_body(directory) or _generated_body(config, repo_id, base)
    return str(ModelCard(f"{front}\n{body.lstrip()}"))


def card_front_matter(config: AdapterConfig, repo_id: str | None = None, license: str | None = None,
                      base_model: str | None = None) -> str:
    """The YAML front matter `hub_card` puts above a card ("---\n...\n---\n"), for an adapter's config:
    what training writes at the top of the README.md it saves, so a folder uploaded by any means (e.g.
    `huggingface-cli upload`) gets the same hub page as `push`."""
    return _front_matter(config, repo_id, license, base_model)[0]


def _front_matter(config: AdapterConfig, repo_id: str | None, license: str | None,
                  base_model: str | None) -> tuple[str, str | None]:
    if base_model is not None and not is_repo_id(base_model):
        raise ConfigError(f"base_model {base_model!r} is not a hub model id; expected org/name, e.g. "
                          "FacebookAI/roberta-base")
    base = base_model or (hub_model_id(config.base_model) if config.base_model else None)
    dataset = _card_dataset(config)
    task = config.task or config.task_type
    model_name = repo_id.split("/")[-1] if repo_id else f"roberta-lora-{task}"
    results = _eval_results(config, dataset, _pipeline_tag(config))
    data = ModelCardData(
        base_model=base,
        library_name=LIBRARY_NAME,
        license=license,
        datasets=[dataset.repo_id] if dataset else None,
        tags=list(dict.fromkeys(["lora", LIBRARY_NAME, task, *([dataset.tag] if dataset and dataset.tag else [])])),
        pipeline_tag=_pipeline_tag(config),
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n", base


def push_adapter(adapter_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                 commit_message: str | None = None, license: str | None = None,
                 base_model: str | None = None) -> str:
    """Upload an adapter folder to the hub repo `repo_id` (created when missing) with its model card;
    returns the repo's URL. Uploads adapter.safetensors, adapter_config.json and README.md (the card of
    `hub_card`), from a temporary copy: the folder itself is not changed.

    Args:
        adapter_dir: the adapter folder; checked first (config, tensors against their recorded sha256).
        repo_id: `user/name` or `org/name`.
        private: create the repo private (an existing repo keeps its visibility).
        token: a hub token with write access; default: HF_TOKEN or the one saved by `hf auth login`.
        commit_message: default "Upload roberta-lora <task> adapter".
        license, base_model: see `hub_card`.

    Raises:
        AdapterError: an invalid adapter folder. ConfigError: a bad repo id, the hub unreachable, or an
            upload the hub refused (one line saying why and what to check).
    """
    directory = Path(adapter_dir)
    config, digest = read_adapter_config(directory)
    read_adapter_tensors(directory, digest)  # a corrupt tensors file is refused here, not after the upload
    if repo_id.count("/") != 1 or not is_repo_id(repo_id):
        raise ConfigError(f"--repo {repo_id!r} is not a hub repo id; expected user/name (e.g. "
                          "alice/roberta-lora-sst2)")
    card = hub_card(directory, repo_id=repo_id, license=license, base_model=base_model)
    if not hub_reachable():
        raise ConfigError(f"cannot push {directory} to {repo_id}: the Hugging Face hub is not reachable (offline, "
                          "or HF_HUB_OFFLINE=1 is set); connect and run the command again")
    message = commit_message or f"Upload roberta-lora {config.task or config.task_type} adapter"
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="roberta-lora-push-") as staging:
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copyfile(directory / name, Path(staging) / name)
        (Path(staging) / CARD_NAME).write_text(card, encoding="utf-8")
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=message)
        except hub_errors() as error:
            raise ConfigError(_push_failure(directory, repo_id, error)) from None
    return str(url)


# ----------------------------------------------------------------------------- card parts
def _card_dataset(config: AdapterConfig) -> CardDataset | None:
    """The task's dataset; SQuAD adapters of another name by their task type; None for other tasks."""
    if config.task in TASK_DATASETS:
        return TASK_DATASETS[config.task]
    return TASK_DATASETS.get(config.task_type) if config.task_type.startswith("squad") else None


def _pipeline_tag(config: AdapterConfig) -> str:
    return "text-classification" if config.task_type == "glue" else "question-answering"


def _eval_results(config: AdapterConfig, dataset: CardDataset | None, pipeline: str) -> list[EvalResult]:
    """One EvalResult per recorded score (GLUE values 0-1, SQuAD in percent, as stored); none without a
    known dataset, since the hub's model-index requires one."""
    if dataset is None:
        return []
    results = []
    for key, value in sorted(config.metrics.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        metric, split = _metric_and_split(key, config.task_type, dataset.splits)
        if metric is None:
            continue
        if config.max_eval_samples is not None:  # datasets' slice notation: the rows the score is on
            split = f"{split}[:{config.max_eval_samples}]"
        results.append(EvalResult(
            task_type=pipeline, dataset_type=dataset.repo_id, dataset_name=dataset.name,
            dataset_config=dataset.config, dataset_split=split, metric_type=metric, metric_value=value,
            metric_name=key,
        ))
    return results


def _metric_and_split(key: str, task_type: str, splits: tuple[str, ...]) -> tuple[str | None, str]:
    """"accuracy" -> ("accuracy", first split); "accuracy_mismatched" -> ("accuracy", "validation_mismatched")
    (evaluation.evaluate's naming); (None, "") for a key that is not a score."""
    if task_type != "glue":
        return (key, splits[0]) if key in SQUAD_SCORES else (None, "")
    if key in GLUE_METRICS:
        return key, splits[0]
    match = re.fullmatch(rf"({'|'.join(GLUE_METRICS)})_(\w+)", key)
    if match and f"validation_{match.group(2)}" in splits[1:]:
        return match.group(1), f"validation_{match.group(2)}"
    return None, ""


def _existing_body(directory: Path) -> str | None:
    """The folder's README.md without its YAML front matter (a card pushed before has one), or None."""
    path = directory / CARD_NAME
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AdapterError(f"{path} is not UTF-8 text; fix or delete it (a card is generated without it)") from None
    if text.startswith("---"):
        text = ModelCard(text, ignore_metadata_errors=True).text
    return text if text.strip() else None


def _generated_body(config: AdapterConfig, repo_id: str | None, base: str | None) -> str:
    task = config.task or config.task_type
    base_name = base or config.base_model
    rows = "\n".join(f"| {name} | {_format(value)} |" for name, value in sorted(config.metrics.items()))
    subset = (f" (the first {config.max_eval_samples} rows of each validation split)"
              if config.max_eval_samples is not None else "")
    metrics = f"## Validation metrics{subset}\n\n| metric | value |\n|---|---|\n{rows}\n\n" if rows else ""
    source = f'snapshot_download("{repo_id}")' if repo_id else '"path/to/this/folder"'
    download = "from huggingface_hub import snapshot_download\n" if repo_id else ""
    on_base = f', model_id="{base}"' if base else ""
    return (
        f"# roberta-lora adapter: {task}\n\n"
        f"A {config.method} adapter (rank {config.lora_rank}, alpha {config.lora_alpha:g}, targets "
        f"{', '.join(config.targets)}{', ' + config.head + ' head' if config.task_type == 'glue' else ''}) for `{base_name or 'its base model'}`, "
        "made with roberta-lora.\n\n"
        f"{metrics}"
        "## Use it\n\n"
        f"```python\n{download}from roberta_lora import LoraWrapperRoberta\n\n"
        f"model = LoraWrapperRoberta.from_adapter({source}{on_base})\n```\n"
    )


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _push_failure(directory: Path, repo_id: str, error: BaseException) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    reason = first_line(error)
    if status == 401 or "token" in reason.lower():
        fix = "log in with `hf auth login` or pass --token (a token with write access)"
    elif status == 403:
        fix = f"use a token allowed to write to {repo_id.split('/')[0]}, or push to your own namespace"
    else:
        fix = "check the network and the repo id, then run the command again"
    return f"could not push {directory} to {repo_id} ({reason}); {fix}"

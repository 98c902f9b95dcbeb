"""`roberta-lora serve` as something you can put on a network: keys, where run-time loads may come from,
limits that hold before work is done, adapters that cannot be swapped under a request, honest metrics and
start-up errors. Real servers on loopback, real httpx clients."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from roberta_lora.cli.main import main  # noqa: E402
from roberta_lora.evaluation.predict import Predictor  # noqa: E402
from roberta_lora.serving.app import ServeConfig  # noqa: E402

from serve_helpers import (  # noqa: E402
    ADMIN,
    ADMIN_KEY,
    API,
    API_KEY,
    RunningServer,
    assert_same,
    example,
    make_adapter_dirs,
    metric_samples,
    save_adapter,
)

NOT_FOUND = "not found under the adapter roots"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tiny_model_dir, tmp_path_factory) -> Path:
    """The adapter root: the four task adapters, plus a regression adapter `other` for replacements."""
    folder = tmp_path_factory.mktemp("roots") / "adapters"
    make_adapter_dirs(tiny_model_dir, folder)
    save_adapter(tiny_model_dir, folder / "rank32", seed=9, lora_rank=32, task="sst2",
                 label_names=["negative", "positive"])
    return folder


def config(tiny_model_dir, root, **kwargs) -> ServeConfig:
    defaults = {"adapters": {"sst2": str(root / "sst2"), "stsb": str(root / "stsb")}, "api_key": API_KEY,
                "admin_key": ADMIN_KEY, "adapter_roots": [str(root)]}
    return ServeConfig(model=str(tiny_model_dir), **{**defaults, **kwargs})


@pytest.fixture(scope="module")
def server(tiny_model_dir, root):
    with RunningServer(config(tiny_model_dir, root)) as running:
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30, headers=API) as c:
        yield c


@pytest.fixture(scope="module")
def offline(root, tiny_model_dir):
    predictors: dict[str, Predictor] = {}

    def expected(folder: str, item: dict) -> dict:
        if folder not in predictors:
            predictors[folder] = Predictor(root / folder, model_id=str(tiny_model_dir))
        return predictors[folder].predict([item["text"]], [item["text_pair"]] if "text_pair" in item else None)[0]

    return expected


# ----------------------------------------------------------------------------- keys
def test_every_endpoint_but_health_needs_the_api_key(server):
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/health").status_code == 200
        for method, path in [("GET", "/metrics"), ("GET", "/adapters"), ("GET", "/openapi.json"),
                             ("POST", "/predict"), ("GET", "/nowhere")]:
            for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key-wrong"}, {"Authorization": API_KEY},
                            {"Authorization": f"Basic {API_KEY}"}):
                response = anonymous.request(method, path, headers=headers, json={"inputs": []})
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json() == {"error": "missing or wrong API key: send Authorization: Bearer <key>",
                                           "field": None}
        ok = anonymous.post("/predict", headers=API, json={"inputs": [example("sst2", 0)]})
        assert ok.status_code == 200
        assert anonymous.post("/predict", headers=ADMIN, json={"inputs": [example("sst2", 0)]}).status_code == 200


def test_loading_and_unloading_need_the_admin_key(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for headers in ({}, API, {"Authorization": "Bearer " + ADMIN_KEY[:-1]}):
            assert c.post("/adapters", json={"name": "x", "path": "sst2"}, headers=headers).status_code == 401
            assert c.delete("/adapters/sst2", headers=headers).status_code == 401
        assert c.get("/adapters", headers=API).json()["adapters"][0]["name"] == "sst2"  # nothing was removed


def test_without_an_admin_key_run_time_loads_are_off(tiny_model_dir, root):
    with RunningServer(config(tiny_model_dir, root, admin_key=None, api_key=None)) as running, \
            httpx.Client(base_url=running.url, timeout=30) as c:
        for response in (c.post("/adapters", json={"name": "x", "path": "sst2"}), c.delete("/adapters/sst2"),
                         c.post("/adapters", json={"name": "x", "path": "sst2"}, headers=ADMIN)):
            assert response.status_code == 403 and "--admin-key" in response.json()["error"]
        assert [a["name"] for a in c.get("/adapters").json()["adapters"]] == ["sst2", "stsb"]


def test_keys_never_reach_logs_or_metrics(server, client, caplog):
    with caplog.at_level("DEBUG"):
        client.post("/predict", json={"inputs": [example("sst2", 1)]})
        client.post("/adapters", json={"name": "x", "path": "/etc"}, headers=ADMIN)
        client.get("/adapters", headers={"Authorization": "Bearer " + "k" * 20})
    text = client.get("/metrics").text + caplog.text
    assert API_KEY not in text and ADMIN_KEY not in text and "k" * 20 not in text


# ----------------------------------------------------------------------------- where adapters come from
@pytest.fixture(scope="module")
def outside(tmp_path_factory, tiny_model_dir) -> Path:
    """A valid adapter outside the root, and links into it from inside the root."""
    folder = tmp_path_factory.mktemp("outside")
    save_adapter(tiny_model_dir, folder / "adapter", seed=3, task="sst2", label_names=["n", "p"])
    (folder / "secret.json").write_text(json.dumps({"password": 1, "token": 2}))
    return folder


def test_refused_sources_all_look_alike_and_leak_nothing(server, client, root, outside):
    (root / "link-out").unlink(missing_ok=True)
    (root / "link-out").symlink_to(outside / "adapter")
    tricky = root / "tricky"
    tricky.mkdir(exist_ok=True)
    (tricky / "adapter_config.json").unlink(missing_ok=True)
    (tricky / "adapter_config.json").symlink_to(outside / "secret.json")
    sources = ["/etc", "/", "~", "../..", "../../..", str(outside / "adapter"), "link-out", "tricky", "missing",
               "sst2/../../outside", "alice/roberta-lora-sst2", "/etc/passwd", "sst2/adapter_config.json",
               "." * 300, "a\\b", str(root) + "/../" + root.name + "/../x"]
    bodies = set()
    for source in sources:
        response = client.post("/adapters", json={"name": "probe", "path": source}, headers=ADMIN)
        assert response.status_code in (404, 422), (source, response.text)
        text = response.text
        for secret in (str(root), str(outside), "etc", "passwd", "password", "token", os.path.expanduser("~")):
            assert secret not in text.replace("/etc\"", ""), (source, text)
        bodies.add((response.status_code, text))
    missing = client.post("/adapters", json={"name": "probe", "path": "no-such-folder"}, headers=ADMIN)
    forbidden = client.post("/adapters", json={"name": "probe", "path": str(outside / "adapter")}, headers=ADMIN)
    assert missing.json() == forbidden.json() == {"error": f"cannot load adapter 'probe': {NOT_FOUND}", "field": "path"}
    assert "probe" not in [a["name"] for a in client.get("/adapters").json()["adapters"]]


def test_listing_shows_no_server_paths(client, root):
    listed = client.get("/adapters").json()["adapters"]
    assert {"name", "task", "task_type", "labels", "rank", "size_bytes", "metrics", "loaded"} <= set(listed[0])
    assert str(root) not in json.dumps(listed) and "source" not in listed[0]


def test_hub_ids_only_when_allowed(tiny_model_dir, root, tmp_path, monkeypatch):
    """With --allow-hub-adapters a cached hub adapter loads; without it the same id is 'not found'."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--alice--served" / "snapshots" / ("a" * 40)
    snapshot.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(root / "sst2", snapshot)
    (cache / "models--alice--served" / "refs").mkdir()
    (cache / "models--alice--served" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for allowed, status in ((False, 404), (True, 201)):
        with RunningServer(config(tiny_model_dir, root, allow_hub_adapters=allowed)) as running, \
                httpx.Client(base_url=running.url, timeout=30, headers=ADMIN) as c:
            response = c.post("/adapters", json={"name": "hub", "path": "alice/served"})
            assert response.status_code == status, response.text


# ----------------------------------------------------------------------------- limits before work
def raw_request(port: int, head: bytes, body: bytes = b"", read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while read and b"\r\n\r\n" not in answer or (read and len(answer.split(b"\r\n\r\n", 1)[1]) < 20):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_body_over_the_limit_is_refused_from_its_header_before_it_is_read(server):
    started = time.monotonic()
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: 300000000\r\n\r\n").encode()
    answer = raw_request(server.port, head)  # not one byte of the 300 MB is sent
    assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 2
    assert b"--max-body-mb 4" in answer


def test_a_chunked_body_is_cut_off_at_the_limit(server, client):
    def chunks():
        for _ in range(100):  # 100 x 100 kB = 10 MB, more than the 4 MB limit
            yield b" " * 100_000

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "--max-body-mb" in response.json()["error"]


def test_health_stays_fast_while_another_client_sends_a_large_body(server):
    body = json.dumps({"inputs": [{"adapter": "sst2", "text": "a " * 1_500_000}]}).encode()  # 3 MB
    answers: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=60, headers=API) as c:
            answers.append(c.post("/predict", content=body, headers={"content-type": "application/json"}).status_code)

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    with httpx.Client(base_url=server.url, timeout=30) as c:
        while sender.is_alive() or len(latencies) < 20:
            started = time.monotonic()
            assert c.get("/health").status_code == 200
            latencies.append(time.monotonic() - started)
    sender.join()
    assert answers == [422]  # under the body limit, over --max-text-chars: refused after parsing, off the loop
    assert max(latencies) < 1.0, max(latencies)


def test_a_slow_request_gets_504_and_its_queued_work_is_dropped(tiny_model_dir, root):
    with RunningServer(config(tiny_model_dir, root, batch_window_ms=1000, request_timeout_s=0.2)) as running, \
            httpx.Client(base_url=running.url, timeout=30, headers=API) as c:
        before = metric_samples(c).get(("serve_batch_size_count", ()), 0)
        response = c.post("/predict", json={"inputs": [example("sst2", 0)]})
        assert response.status_code == 504 and "--request-timeout-s 0.2" in response.json()["error"]
        time.sleep(1.2)  # past the batch window: the dropped example must not have run
        assert metric_samples(c).get(("serve_batch_size_count", ()), 0) == before


def test_work_of_a_client_that_hung_up_is_not_computed(tiny_model_dir, root):
    with RunningServer(config(tiny_model_dir, root, batch_window_ms=600)) as running, \
            httpx.Client(base_url=running.url, timeout=30, headers=API) as c:
        before = metric_samples(c).get(("serve_batch_size_count", ()), 0)
        body = json.dumps({"inputs": [example("sst2", 0)]}).encode()
        head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        raw_request(running.port, head, body, read=False)  # sends, then closes at once
        time.sleep(1.0)
        samples = metric_samples(c)
        assert samples.get(("serve_batch_size_count", ()), 0) == before
        assert samples[("serve_requests_total", (("endpoint", "POST /predict"), ("status", "499")))] == 1


# ----------------------------------------------------------------------------- adapters swapped under requests
def test_replacing_an_adapter_while_a_request_waits_gives_409_never_another_answer(tiny_model_dir, root):
    with RunningServer(config(tiny_model_dir, root, batch_window_ms=700)) as running, \
            httpx.Client(base_url=running.url, timeout=30, headers=ADMIN) as c:
        assert c.post("/adapters", json={"name": "x", "path": "sst2"}).status_code == 201
        answers: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: answers.append(
            c.post("/predict", json={"inputs": [{"adapter": "x", "text": "A fine film."}]})))
        waiting.start()
        time.sleep(0.2)  # the request waits in its batch window
        assert c.delete("/adapters/x").status_code == 200
        assert c.post("/adapters", json={"name": "x", "path": "stsb"}).status_code == 201  # now a regression
        waiting.join()
        assert answers[0].status_code == 409 and "replaced" in answers[0].json()["error"]
        waiting = threading.Thread(target=lambda: answers.append(
            c.post("/predict", json={"inputs": [{"adapter": "x", "text": "A fine film."}]})))
        waiting.start()
        time.sleep(0.2)
        assert c.delete("/adapters/x").status_code == 200
        waiting.join()
        assert answers[1].status_code == 404 and "removed" in answers[1].json()["error"]


def test_concurrent_load_unload_and_predict_on_one_name(tiny_model_dir, root, offline):
    """Load sst2 or mnli as `x`, unload it, and predict on `x`, all at once: no 500, and every 200 is
    exactly the answer of one of the two adapters (never a mix, never another task's shape)."""
    item = {"adapter": "x", "text": "The film was fine.", "text_pair": "It was good."}
    wanted = [offline("sst2", item), offline("mnli", item)]

    async def run(url: str) -> list[tuple[str, int, dict]]:
        seen: list[tuple[str, int, dict]] = []
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=ADMIN) as c:
            async def loader(k: int) -> None:
                for i in range(12):
                    r = await c.post("/adapters", json={"name": "x", "path": ["sst2", "mnli"][(i + k) % 2]})
                    seen.append(("load", r.status_code, r.json()))
                    await asyncio.sleep(0.05)  # let some predictions find it loaded
                    r = await c.delete("/adapters/x")
                    seen.append(("unload", r.status_code, r.json()))

            async def predictor() -> None:
                for _ in range(40):
                    r = await c.post("/predict", json={"inputs": [item, item]})
                    seen.append(("predict", r.status_code, r.json()))

            await asyncio.gather(*(loader(k) for k in range(3)), *(predictor() for _ in range(4)))
            await c.post("/adapters", json={"name": "x", "path": "sst2"})  # one answer checked for sure
            r = await c.post("/predict", json={"inputs": [item, item]})
            seen.append(("predict", r.status_code, r.json()))
        return seen

    with RunningServer(config(tiny_model_dir, root, batch_window_ms=2)) as running:
        seen = asyncio.run(run(running.url))
    allowed = {"load": {201, 409}, "unload": {200, 404}, "predict": {200, 404, 409}}
    for kind, status, body in seen:
        assert status in allowed[kind], (kind, status, body)
        if kind == "predict" and status == 200:
            first, second = body["results"]
            assert first == second  # one request, one version
            assert any(first.keys() == w.keys() and first["label"] == w["label"] for w in wanted)
            match = next(w for w in wanted if w["label"] == first["label"] and w.keys() == first.keys())
            assert_same(first, match)
    assert sum(1 for kind, status, _ in seen if kind == "predict" and status == 200) > 0


def test_concurrent_duplicate_loads_one_201_the_rest_409(server):
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=ADMIN) as c:
            answers = await asyncio.gather(*(c.post("/adapters", json={"name": "twin", "path": "mnli"})
                                             for _ in range(8)))
            await c.delete("/adapters/twin")
        return sorted(a.status_code for a in answers)

    assert asyncio.run(run()) == [201] + [409] * 7


# ----------------------------------------------------------------------------- honest metrics
def test_an_internal_error_is_a_generic_500_and_is_counted(tiny_model_dir, root, caplog):
    with RunningServer(config(tiny_model_dir, root)) as running, \
            httpx.Client(base_url=running.url, timeout=30, headers=API) as c:
        engine = running.app.state.server.engine

        def broken(rows):
            raise RuntimeError(f"boom at {root}")

        engine.predict = broken
        with caplog.at_level("ERROR"):
            response = c.post("/predict", json={"inputs": [example("sst2", 0)]})
        assert response.status_code == 500
        assert response.json()["field"] is None and str(root) not in response.text and "boom" not in response.text
        samples = metric_samples(c)
        assert samples[("serve_requests_total", (("endpoint", "POST /predict"), ("status", "500")))] == 1
        assert samples[("serve_errors_total", (("kind", "500"),))] == 1
        assert "boom" in caplog.text  # the server's log keeps the detail
        del engine.predict
        assert c.post("/predict", json={"inputs": [example("sst2", 0)]}).status_code == 200


def test_refused_requests_are_counted_too(client):
    before = metric_samples(client)
    with httpx.Client(base_url=client.base_url) as anonymous:
        anonymous.get("/adapters")
    client.post("/predict", json={"inputs": []})
    after = metric_samples(client)
    for labels in ((("endpoint", "GET /adapters"), ("status", "401")), (("endpoint", "POST /predict"), ("status", "422"))):
        key = ("serve_requests_total", labels)
        assert after[key] == before.get(key, 0) + 1


# ----------------------------------------------------------------------------- memory with mixed ranks
def test_the_pool_budget_counts_what_the_engine_holds_with_mixed_ranks(tiny_model_dir, root, tmp_path):
    """Two r=8 adapters fit the budget next to a loaded r=32 one; using a third r=8 evicts. What the pool
    counts is exactly what the engine holds, however the ranks mix."""
    for i in range(3):
        save_adapter(tiny_model_dir, tmp_path / f"r8-{i}", seed=30 + i, task="sst2", label_names=["n", "p"])
    base = config(tiny_model_dir, root, adapters={"big": str(root / "rank32")}, adapter_roots=[str(tmp_path)])
    with RunningServer(base) as running, httpx.Client(base_url=running.url, timeout=30, headers=ADMIN) as c:
        server = running.app.state.server
        big = server.engine.nbytes(next(iter(server.pool._loaded)))
        for i in range(3):
            assert c.post("/adapters", json={"name": f"r8-{i}", "path": f"r8-{i}"}).status_code == 201
        small = server.engine.nbytes(server.pool.version("r8-0").key)
        assert big > 3 * small
        assert server.pool.held_bytes == server.engine.batched.held_bytes()
        server.pool.budget_bytes = big + 2 * small
        for name in ("big", "r8-0", "r8-1"):
            assert c.post("/predict", json={"inputs": [{"adapter": name, "text": "ok"}]}).status_code == 200
        assert sorted(server.pool.loaded) == ["big", "r8-0", "r8-1"]
        evictions = server.pool.evictions
        assert c.post("/predict", json={"inputs": [{"adapter": "r8-2", "text": "ok"}]}).status_code == 200
        assert server.pool.evictions == evictions + 1 and "big" not in server.pool.loaded
        assert server.pool.held_bytes == server.engine.batched.held_bytes() <= server.pool.budget_bytes


# ----------------------------------------------------------------------------- start-up
def test_start_up_mistakes_are_one_line_and_exit_2(tiny_model_dir, root, tmp_path, capsys, monkeypatch):
    import uvicorn
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the CLI turns it off before transformers is imported
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server must not start"))
    corrupt = tmp_path / "corrupt"
    import shutil

    shutil.copytree(root / "sst2", corrupt)
    data = bytearray((corrupt / "adapter.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (corrupt / "adapter.safetensors").write_bytes(bytes(data))
    model = str(tiny_model_dir)
    cases = [
        (["--model", model, "--adapter", f"a={tmp_path / 'missing'}"], "missing"),
        (["--model", str(tmp_path / "no-model"), "--adapter", f"a={root / 'sst2'}"], "no-model"),
        (["--model", model, "--adapter", f"a={corrupt}"], "sha256"),
        (["--model", model, "--adapter", "a=" + str(root / "sst2"), "--adapter-root", str(tmp_path / "nope")], "nope"),
        (["--model", model, "--batch-window-ms", "inf"], "--batch-window-ms"),
        (["--model", model, "--batch-window-ms", "nan"], "--batch-window-ms"),
        (["--model", model, "--max-adapter-memory-mb", "nan"], "--max-adapter-memory-mb"),
        (["--model", model, "--max-body-mb", "0"], "--max-body-mb"),
        (["--model", model, "--request-timeout-s", "-1"], "--request-timeout-s"),
        (["--model", model, "--keep-alive-s", "0"], "--keep-alive-s"),
        (["--model", model, "--keep-alive-s", "-5"], "--keep-alive-s"),
        (["--model", model, "--keep-alive-s", "nan"], "--keep-alive-s"),
        (["--model", model, "--keep-alive-s", "inf"], "--keep-alive-s"),
        (["--model", model, "--keep-alive-s", "3601"], "--keep-alive-s"),
        (["--model", model, "--api-key", "short"], "--api-key"),
        (["--model", model, "--device", "cuda"], "CUDA"),
        (["--model", model, "--dtype", "float16"], "float16"),
    ]
    for argv, word in cases:
        assert main(["serve", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and word in err, (argv, err)
    for value in ("20s", "", "1e999999x"):  # not a number: argparse's usage line, then one error line
        with pytest.raises(SystemExit) as stop:
            main(["serve", "--model", model, "--keep-alive-s", value])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "Traceback" not in err, (value, err)
        assert err.strip().splitlines()[-1].endswith(f"argument --keep-alive-s: invalid float value: {value!r}")


def test_a_public_address_without_a_key_warns(tiny_model_dir, root, capsys, monkeypatch):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(kwargs))
    argv = ["serve", "--model", str(tiny_model_dir), "--adapter", f"sst2={root / 'sst2'}"]
    assert main([*argv, "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0 without --api-key" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("ROBERTA_LORA_API_KEY", API_KEY)
    assert main([*argv, "--host", "0.0.0.0"]) == 0
    assert main([*argv]) == 0
    assert capsys.readouterr().err == "" and [k["host"] for k in started] == ["0.0.0.0", "0.0.0.0", "127.0.0.1"]


@pytest.mark.parametrize("value", ["20", True, None, float("nan"), float("inf"), 0, -1.0, 3600.5, [20]])
def test_serve_config_refuses_a_bad_keep_alive(value):
    from roberta_lora.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--keep-alive-s must be") as error:
        ServeConfig(model="m", keep_alive_s=value).validate()
    assert repr(value) in str(error.value)


def test_start_up_logs_no_rank_of_the_template_base(tiny_model_dir, root, caplog):
    """The engine's base is built as a default LoRA wrapper; its "LoRA (r=8)" line named no served adapter
    (a PiSSA adapter of rank 16 was served while the log said r=8)."""
    from roberta_lora.serving.app import build_server

    with caplog.at_level(logging.INFO, logger="roberta_lora"):
        build_server(config(tiny_model_dir, root))
    assert "LoRA (r=" not in caplog.text
    assert logging.getLogger("roberta_lora.model.wrapper").level == logging.NOTSET  # put back


def test_keep_alive_reaches_uvicorn(tiny_model_dir, root, monkeypatch):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(kwargs))
    argv = ["serve", "--model", str(tiny_model_dir), "--adapter", f"sst2={root / 'sst2'}"]
    assert main(argv) == 0 and main([*argv, "--keep-alive-s", "75"]) == 0 and main([*argv, "--keep-alive-s", "0.5"]) == 0
    assert [k["timeout_keep_alive"] for k in started] == [20.0, 75.0, 0.5]


def test_an_idle_connection_is_closed_after_keep_alive_s(tiny_model_dir, root):
    """The server closes an idle keep-alive connection after --keep-alive-s (here 0.5 s), not before."""
    import http.client

    with RunningServer(config(tiny_model_dir, root, keep_alive_s=0.5)) as running:
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        try:
            connection.request("GET", "/health")
            assert connection.getresponse().read()
            connection.sock.settimeout(0.1)
            with pytest.raises(TimeoutError):  # still open right after the answer
                connection.sock.recv(1)
            connection.sock.settimeout(5)
            started = time.monotonic()
            assert connection.sock.recv(1) == b""  # the server closed it
            assert time.monotonic() - started < 2.0
        finally:
            connection.close()


def test_bfloat16_serving_answers_like_float32(tiny_model_dir, root, offline):
    item = example("sst2", 2)
    with RunningServer(config(tiny_model_dir, root, dtype="bfloat16", device="cpu")) as running, \
            httpx.Client(base_url=running.url, timeout=30, headers=API) as c:
        assert running.app.state.server.engine.dtype == torch.bfloat16
        got = c.post("/predict", json={"inputs": [item]}).json()["results"][0]
    want = offline("sst2", item)
    assert got["label"] == want["label"] and abs(got["score"] - want["score"]) < 0.03

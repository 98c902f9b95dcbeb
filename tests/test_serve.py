"""`roberta-lora serve`: the real server on a loopback port, answered by a real httpx client.

Four adapters of different tasks on one toy base; every answer must equal the offline `Predictor`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import torch

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
prometheus_client = pytest.importorskip("prometheus_client")

from roberta_lora.evaluation.predict import Predictor  # noqa: E402
from roberta_lora.serving.app import ServeConfig  # noqa: E402

from serve_helpers import (  # noqa: E402
    ADAPTERS,
    ADMIN,
    ADMIN_KEY,
    API,
    API_KEY,
    RunningServer,
    assert_same,
    example,
    make_adapter_dirs,
    metric_samples,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The toy model's matmuls are tiny: on a small CI box, intra-op threads cost 20x more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    return make_adapter_dirs(tiny_model_dir, tmp_path_factory.mktemp("serve-adapters"))


@pytest.fixture(scope="module")
def offline(adapter_dirs, tiny_model_dir):
    """expected(input) -> the offline Predictor's result for that input."""
    predictors = {n: Predictor(d, model_id=str(tiny_model_dir)) for n, d in adapter_dirs.items()}

    def expected(item: dict) -> dict:
        predictor = predictors[item["adapter"]]
        if item["adapter"] == "squad":
            return predictor.predict([item["question"]], [item["context"]])[0]
        return predictor.predict([item["text"]], [item["text_pair"]] if "text_pair" in item else None)[0]

    return expected


def serve_config(tiny_model_dir, adapter_dirs, **kwargs) -> ServeConfig:
    """The four adapters, keys, and run-time loads from the folder that holds them."""
    root = next(iter(adapter_dirs.values())).parent
    defaults = {"engine": "mixed", "api_key": API_KEY, "admin_key": ADMIN_KEY, "adapter_roots": [str(root)]}
    return ServeConfig(model=str(tiny_model_dir), adapters={n: str(d) for n, d in adapter_dirs.items()},
                       **{**defaults, **kwargs})


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapter_dirs):
    with RunningServer(serve_config(tiny_model_dir, adapter_dirs)) as running:
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30, headers=API) as c:
        yield c


def test_predict_equals_offline_predictor_for_every_task(client, offline):
    inputs = [example(a, i) for i in range(6) for a in ADAPTERS]
    response = client.post("/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(inputs)
    for item, got in zip(inputs, results, strict=True):
        assert_same(got, offline(item))
    assert set(results[0]) == {"label", "score", "scores"} and set(results[2]) == {"score"}
    assert "answer" in results[3] and "nbest" in results[3]


def test_health_adapters_and_metrics(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["adapters"] == 4
    listed = {a["name"]: a for a in client.get("/adapters").json()["adapters"]}
    assert set(listed) == set(ADAPTERS)
    assert listed["mnli"]["labels"] == ["entailment", "neutral", "contradiction"]
    assert listed["squad"]["task_type"] == "squad_v2" and listed["stsb"]["task"] == "stsb"
    assert listed["sst2"]["metrics"] == {"accuracy": 0.5} and listed["sst2"]["size_bytes"] > 0
    client.post("/predict", json={"inputs": [example("sst2", 1)]})
    samples = metric_samples(client)
    assert samples[("serve_examples_total", (("adapter", "sst2"),))] >= 1
    assert samples[("serve_requests_total", (("endpoint", "POST /predict"), ("status", "200")))] >= 1
    assert samples[("serve_batch_size_count", ())] >= 1


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"inputs": [{"adapter": "nope", "text": "x"}]}, 404, ["nope", "sst2"]),
    ({"inputs": [{"adapter": "sst2", "text": "   "}]}, 422, ["inputs[0]", "empty"]),
    ({"inputs": [{"adapter": "sst2", "text": "a" * 20_001}]}, 422, ["characters", "max-text-chars"]),
    ({"inputs": [{"adapter": "sst2"}]}, 422, ['missing "text"']),
    ({"inputs": [{"adapter": "sst2", "text": 5}]}, 422, ["inputs[0].text", "string"]),
    ({"inputs": [{"text": "x"}]}, 422, ["inputs[0].adapter", "missing"]),
    ({"inputs": [{"adapter": "sst2", "text": "x", "colour": 1}]}, 422, ["colour", "unknown field"]),
    ({"inputs": [{"adapter": "squad", "question": "Who?"}]}, 422, ['missing "context"', "SQuAD"]),
    ({"inputs": [{"adapter": "squad", "text": "Who?"}]}, 422, ['missing "question"']),
    ({"inputs": [{"adapter": "sst2", "question": "q", "text": "t"}]}, 422, ['"question" does not apply']),
    ({"inputs": []}, 422, ["empty"]),
    ({"inputs": [{"adapter": "sst2", "text": "x"}] * 65}, 422, ["65 inputs", "max-inputs 64"]),
    ({"input": []}, 422, ["inputs", "missing"]),
    ([1, 2], 422, ["body"]),
])
def test_bad_requests_get_a_clear_4xx(client, body, status, words):
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error


def test_invalid_json_and_adapter_errors(client, adapter_dirs, tmp_path):
    response = client.post("/predict", content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    (adapter_dirs["sst2"].parent / "empty").mkdir(exist_ok=True)
    response = client.post("/adapters", json={"name": "x", "path": "empty"}, headers=ADMIN)
    assert response.status_code == 422 and response.json() == {
        "error": "cannot load adapter 'x': not a valid adapter for this server (the server's log says why)",
        "field": "path"}
    response = client.post("/adapters", json={"name": "sst2", "path": "sst2"}, headers=ADMIN)
    assert response.status_code == 409 and "already served" in response.json()["error"]
    response = client.post("/adapters", json={"name": "bad name!", "path": "sst2"}, headers=ADMIN)
    assert response.status_code == 422 and response.json()["field"] == "name"
    response = client.delete("/adapters/ghost", headers=ADMIN)
    assert response.status_code == 404 and "ghost" in response.json()["error"]
    assert client.post("/predict", json={"inputs": [example("sst2", 0)]}).status_code == 200  # still serving


def test_load_and_unload_at_run_time(client, adapter_dirs, offline):
    response = client.post("/adapters", json={"name": "sst2-copy", "path": "sst2"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    described = response.json()
    assert described["task"] == "sst2" and described["rank"] == 8 and described["loaded"]
    assert not any(str(adapter_dirs["sst2"].parent) in str(v) for v in described.values())  # no server path
    item = example("sst2", 4)
    got = client.post("/predict", json={"inputs": [{**item, "adapter": "sst2-copy"}]}).json()["results"][0]
    assert_same(got, offline(item))
    assert client.delete("/adapters/sst2-copy", headers=ADMIN).json() == {"deleted": "sst2-copy"}
    response = client.post("/predict", json={"inputs": [{**item, "adapter": "sst2-copy"}]})
    assert response.status_code == 404 and "sst2-copy" in response.json()["error"]
    absolute = client.post("/adapters", json={"name": "abs", "path": str(adapter_dirs["mnli"])}, headers=ADMIN)
    assert absolute.status_code == 201 and absolute.json()["labels"][0] == "entailment"  # absolute, inside the root
    assert client.delete("/adapters/abs", headers=ADMIN).status_code == 200


def test_pool_evicts_under_a_tiny_budget_and_reloads_the_same_answers(tiny_model_dir, adapter_dirs, offline):
    config = serve_config(tiny_model_dir, adapter_dirs, max_adapter_memory_mb=0.001)  # less than one adapter
    with RunningServer(config) as running, httpx.Client(base_url=running.url, timeout=30, headers=API) as client:
        assert len(client.get("/health").json()["loaded"]) == 1  # each load evicted the one before
        for round_ in range(2):
            for adapter in ADAPTERS:
                item = example(adapter, round_)
                got = client.post("/predict", json={"inputs": [item]}).json()["results"][0]
                assert_same(got, offline(item))
                assert client.get("/health").json()["loaded"] == [adapter]
        samples = metric_samples(client)
        assert samples[("serve_adapter_evictions_total", ())] >= 8
        assert samples[("serve_adapter_loads_total", ())] >= 12


def test_load_2000_requests_from_32_clients(server, offline):
    inputs = [example(a, i) for i in range(12) for a in ADAPTERS]
    expected = [offline(item) for item in inputs]
    requests, clients = 2000, 32

    async def run() -> list[tuple[int, int, dict]]:
        answers: list[tuple[int, int, dict]] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=API,
                                     limits=httpx.Limits(max_connections=clients)) as client:
            async def worker(k: int) -> None:
                for n in range(k, requests, clients):
                    index = (n * 5) % len(inputs)
                    response = await client.post("/predict", json={"inputs": [inputs[index]]})
                    answers.append((index, response.status_code, response.json()))
            await asyncio.wait_for(asyncio.gather(*(worker(k) for k in range(clients))), timeout=120)
        return answers

    started = time.monotonic()
    answers = asyncio.run(run())
    elapsed = time.monotonic() - started
    print(f"\nload test: {requests} requests, {clients} clients, {elapsed:.1f} s, {requests / elapsed:.0f} req/s")
    assert len(answers) == requests
    assert [s for _, s, _ in answers if s != 200] == []
    for index, _, body in answers:
        assert_same(body["results"][0], expected[index])
    with httpx.Client(base_url=server.url, headers=API) as client:
        samples = metric_samples(client)
    single = samples[("serve_batch_size_bucket", (("le", "1.0"),))]
    assert samples[("serve_batch_size_count", ())] > single  # some batches held more than one example


def test_an_idle_keep_alive_connection_outlives_the_client_pools_expiry(server):
    """A pooled client (httpx drops idle connections after 5 s) must never send on a connection the server is
    closing: the server keeps an idle one open longer than that, so a request 6 s later is answered on the
    same socket (with uvicorn's 5 s default it met a closed connection: the load test's rare read error)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/health")
        assert connection.getresponse().read() and connection.sock is not None
        socket_before = connection.sock
        time.sleep(6.0)
        connection.request("GET", "/health")
        response = connection.getresponse()
        assert response.status == 200 and response.read()
        assert connection.sock is socket_before  # not a reconnect
    finally:
        connection.close()


def test_the_grouped_engine_equals_offline_predictor(tiny_model_dir, adapter_dirs, offline):
    inputs = [example(a, i) for i in range(4) for a in ADAPTERS]
    with RunningServer(serve_config(tiny_model_dir, adapter_dirs, engine="grouped")) as running, \
            httpx.Client(base_url=running.url, timeout=30, headers=API) as client:
        assert client.get("/health").json()["engine"] == "GroupedEngine"
        response = client.post("/predict", json={"inputs": inputs})
        assert response.status_code == 200, response.text
        for item, got in zip(inputs, response.json()["results"], strict=True):
            assert_same(got, offline(item))


def test_shutdown_answers_the_requests_in_flight(tiny_model_dir, adapter_dirs, offline):
    """A request queued in the batcher when the server is told to stop still gets its answer."""
    item = example("sst2", 1)
    answers: list[httpx.Response] = []
    running = RunningServer(serve_config(tiny_model_dir, adapter_dirs, batch_window_ms=800))
    with running:
        with httpx.Client(base_url=running.url, timeout=30, headers=API) as client:
            sender = threading.Thread(target=lambda: answers.append(client.post("/predict", json={"inputs": [item]})))
            sender.start()
            time.sleep(0.3)  # the request waits in its 800 ms batch window
            running.server.should_exit = True
            sender.join(timeout=30)
    assert len(answers) == 1 and answers[0].status_code == 200, answers
    assert_same(answers[0].json()["results"][0], offline(item))


def test_a_batch_stays_within_its_padded_token_budget() -> None:
    # One long example and many short ones: padded together, each short one costs the long one's length,
    # so the budget is counted as windows x longest window, not as the sum of each example's own length.
    from concurrent.futures import ThreadPoolExecutor

    from roberta_lora.serving.batcher import Batcher, _Item
    from roberta_lora.serving.engine import Encoded, padded_tokens
    from roberta_lora.serving.metrics import ServerMetrics

    def row(length: int, windows: int = 1) -> Encoded:
        return Encoded("a", None, {"input_ids": [[0] * length] * windows})

    loop = asyncio.new_event_loop()
    try:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(lambda rows: [], executor, window_s=0.0, max_tokens=1024, metrics=ServerMetrics())
            rows = [row(512), *[row(10) for _ in range(9)], row(100, windows=3)]
            batcher._queue.extend(_Item(r, loop.create_future(), 0.0) for r in rows)
            assert batcher._queued_tokens() == padded_tokens(rows) == 13 * 512
            first = [i.row for i in batcher._take()]
            assert first == rows[:2] and padded_tokens(first) == 1024  # a third row would pad to 1536
            second = [i.row for i in batcher._take()]
            assert second == rows[2:10] and padded_tokens(second) == 80  # with the 3 windows of 100: 1100
            assert [i.row for i in batcher._take()] == rows[10:]
            alone = row(2000)
            batcher._queue.append(_Item(alone, loop.create_future(), 0.0))
            assert [i.row for i in batcher._take()] == [alone]  # larger than the budget: runs alone
    finally:
        loop.close()

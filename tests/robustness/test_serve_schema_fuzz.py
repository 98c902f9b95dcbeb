"""An external fuzzer against a real server: schemathesis reads the server's own OpenAPI document and sends
requests generated from it (valid and invalid), checking that no answer is a 5xx, that every status code and
body is the one the document lists, and that requests without the key are refused. Bounded: a fixed number
of examples per operation, derandomized, so the run is the same each time."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, settings  # noqa: E402

from roberta_lora.serving.app import ServeConfig  # noqa: E402

from serve_helpers import ADMIN, ADMIN_KEY, API_KEY, RunningServer, make_adapter_dirs  # noqa: E402

EXAMPLES = 30  # per operation


@pytest.fixture(scope="module")
def running(tiny_model_dir, tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz") / "adapters"
    dirs = make_adapter_dirs(tiny_model_dir, root)
    config = ServeConfig(model=str(tiny_model_dir), adapters={n: str(d) for n, d in dirs.items()}, api_key=API_KEY,
                         admin_key=ADMIN_KEY, adapter_roots=[str(root)], max_inputs=8, max_text_chars=2000)
    with RunningServer(config) as server:
        yield server
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def api_schema(running):
    return schemathesis.openapi.from_url(f"{running.url}/openapi.json", headers=ADMIN)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_server_is_what_its_schema_says(case):
    case.call_and_validate(headers=ADMIN, timeout=30)

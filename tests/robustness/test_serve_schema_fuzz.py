"""An external fuzzer against a real server: schemathesis reads the server's own OpenAPI document and sends
requests generated from it (valid and invalid), checking that no answer is a 5xx, that every status code and
body is the one the document lists, and that requests without the key are refused. Bounded: a fixed number
of examples per operation, derandomized, so the run is the same each time."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

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


# Every operation of the document (test_every_operation_is_fuzzed keeps this list whole). The cases come from
# schemathesis' strategies driven by hypothesis directly, not from its pytest plugin, whose reporting reads
# pytest internals that pytest 9.2 removed.
OPERATIONS = ["GET /health", "GET /metrics", "GET /adapters", "POST /adapters", "DELETE /adapters/{name}",
              "POST /predict"]


# the operations that take parameters (the key headers included) or a body: the only ones an invalid request
# can be made for (/health takes nothing)
WITH_INPUTS = set(OPERATIONS) - {"GET /health"}
CASES = [(label, mode) for label in OPERATIONS for mode in GenerationMode
         if mode is GenerationMode.POSITIVE or label in WITH_INPUTS]


def test_every_operation_is_fuzzed(api_schema) -> None:
    operations = {r.ok().label: r.ok() for r in api_schema.get_all_operations()}
    assert sorted(operations) == sorted(OPERATIONS)
    takes = {label for label, op in operations.items() if list(op.iter_parameters()) or list(op.body)}
    assert takes == WITH_INPUTS


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_the_server_is_what_its_schema_says(api_schema, label, mode) -> None:
    """Valid (positive) and invalid (negative) requests for one operation: no 5xx, every status and body as
    documented, checked by schemathesis' own response checks."""
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        case.call_and_validate(headers=ADMIN, timeout=30)

    check()

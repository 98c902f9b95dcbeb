"""The FastAPI application: /predict, /adapters, /health, /metrics over one engine, pool and batcher.

Threads: the event loop parses, checks and answers requests; one "encode" thread tokenizes (its own
tokenizer copy); one "engine" thread runs every batch and every adapter load or removal, so the engine
and the pool's memory are only ever touched by one thread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict

from roberta_lora.data.tokenizer import load_tokenizer
from roberta_lora.errors import AdapterError, ConfigError, DataError, RobertaLoraError
from roberta_lora.serving.batcher import Batcher, ShuttingDown
from roberta_lora.serving.engine import Encoded, Engine, Example, build_engine, encode_example
from roberta_lora.serving.metrics import ServerMetrics
from roberta_lora.serving.pool import AdapterPool, UnknownAdapter


@dataclass
class ServeConfig:
    """What `roberta-lora serve` was asked for (see the CLI's help for each field)."""

    model: str
    adapters: dict[str, str] = field(default_factory=dict)  # name -> folder or hub id
    engine: str = "mixed"
    batch_window_ms: float = 5.0
    max_batch_tokens: int = 8192
    max_inputs: int = 64
    max_text_chars: int = 20_000
    max_adapter_memory_mb: float | None = None


class ApiError(Exception):
    """A client error: HTTP `status` with `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str
    text: str | None = None
    text_pair: str | None = None
    question: str | None = None
    context: str | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[InputModel]


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str


class Server:
    """The engine, pool, batcher, metrics and executors of one app."""

    def __init__(self, config: ServeConfig, engine: Engine) -> None:
        self.config, self.engine = config, engine
        self.metrics = ServerMetrics()
        budget = config.max_adapter_memory_mb
        self.pool = AdapterPool(engine, None if budget is None else int(budget * 2**20))
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self.encode_tokenizer = load_tokenizer(config.model)  # the encode thread's own copy
        self._seen = (0, 0)  # pool loads and evictions already counted
        self.batcher = Batcher(self.run_batch, self.worker, config.batch_window_ms / 1000,
                               config.max_batch_tokens, self.metrics)

    async def on_worker(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, function, *args)

    def run_batch(self, rows: list[Encoded]) -> list[Any]:
        """On the engine thread: load what the rows need, then one forward pass."""
        gone = set(self.pool.ensure([r.adapter for r in rows]))
        self._update_pool_metrics()
        live = [r for r in rows if r.adapter not in gone]
        answers = iter(self.engine.predict(live) if live else [])
        return [UnknownAdapter(f"adapter {r.adapter!r} was removed while the request waited")
                if r.adapter in gone else next(answers) for r in rows]

    def _update_pool_metrics(self) -> None:
        self.metrics.adapters_loaded.set(len(self.pool.loaded))
        loads, evictions = self.pool.loads, self.pool.evictions
        self.metrics.adapter_loads.inc(loads - self._seen[0])
        self.metrics.adapter_evictions.inc(evictions - self._seen[1])
        self._seen = (loads, evictions)

    def check(self, index: int, item: InputModel) -> Example:
        """The example of `inputs[index]`, or an ApiError naming what is wrong."""
        where = f"inputs[{index}]"
        try:
            config = self.pool.config(item.adapter)
        except UnknownAdapter as error:
            raise ApiError(404, f"{where}: {error}") from None
        if config.task_type == "glue":
            needed, wrong = ["text"], ["question", "context"]
            hint = 'a GLUE adapter: give "text" (and "text_pair" for sentence pairs)'
        else:
            needed, wrong = ["question", "context"], ["text", "text_pair"]
            hint = 'a SQuAD adapter: give "question" and "context"'
        for name in needed:
            if getattr(item, name) is None:
                raise ApiError(422, f'{where}: missing "{name}"; adapter {item.adapter!r} is {hint}')
        for name in wrong:
            if getattr(item, name) is not None:
                raise ApiError(422, f'{where}: "{name}" does not apply; adapter {item.adapter!r} is {hint}')
        for name in ("text", "text_pair", "question", "context"):
            value = getattr(item, name)
            if value is not None and not value.strip():
                raise ApiError(422, f'{where}: "{name}" is empty; give some text')
            if value is not None and len(value) > self.config.max_text_chars:
                raise ApiError(413, f'{where}: "{name}" has {len(value)} characters, more than the limit of '
                                    f"{self.config.max_text_chars} (--max-text-chars); send a shorter text")
        return Example(**item.model_dump())

    def encode(self, examples: list[Example]) -> list[Encoded]:
        """On the encode thread: tokenize (SQuAD: windows) and refuse examples larger than a batch."""
        rows = [self._encode(e) for e in examples]
        for index, row in enumerate(rows):
            if row.tokens > self.config.max_batch_tokens:
                raise ApiError(413, f"inputs[{index}] needs {row.tokens} padded tokens, more than one batch holds "
                                    f"(--max-batch-tokens {self.config.max_batch_tokens}); send a shorter text")
        return rows

    def _encode(self, example: Example) -> Encoded:
        return encode_example(self.encode_tokenizer, example, self.pool.config(example.adapter))


def create_app(config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The application. The engine (built from `config` when not given) and the configured adapters are
    loaded at startup (lifespan); shutdown answers every queued example before returning."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        built = engine or await asyncio.to_thread(build_engine, config.engine, config.model)
        server = Server(config, built)
        for name, source in config.adapters.items():
            await server.on_worker(server.pool.register, name, source)
        server._update_pool_metrics()
        server.batcher.start()
        app.state.server = server
        try:
            yield
        finally:
            await server.batcher.close()
            server.worker.shutdown(wait=True)
            server.encoder.shutdown(wait=True)

    app = FastAPI(title="roberta-lora serve", lifespan=lifespan)
    add_routes(app)
    return app


def add_routes(app: FastAPI) -> None:
    """Endpoints, error handlers and the request metrics middleware."""

    def server_of(request: Request) -> Server:
        return request.app.state.server

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.monotonic()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = f"{request.method} {route.path if route else 'unknown'}"
        server = getattr(request.app.state, "server", None)
        if server is not None:
            server.metrics.requests.labels(endpoint, str(response.status_code)).inc()
            server.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
            if response.status_code >= 400:
                server.metrics.errors.labels(str(response.status_code)).inc()
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RobertaLoraError)
    async def toolkit_error(request: Request, error: RobertaLoraError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(error).__name__}: {error}); only this request "
                                      "failed, the server keeps running"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            ctx = problems[0].get("ctx", {})
            return JSONResponse({"error": f"the body is not valid JSON ({ctx.get('error', 'parse error')}); "
                                          'send e.g. {"inputs": [{"adapter": "sst2", "text": "..."}]}'},
                                status_code=400)
        return JSONResponse({"error": "; ".join(_problem(p) for p in problems[:5])}, status_code=422)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        server = server_of(request)
        return {"status": "ok", "engine": type(server.engine).__name__, "adapters": len(server.pool.describe()),
                "loaded": server.pool.loaded}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(server_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/adapters")
    async def list_adapters(request: Request) -> dict[str, Any]:
        return {"adapters": server_of(request).pool.describe()}

    @app.post("/adapters", status_code=201)
    async def add_adapter(body: AdapterRequest, request: Request) -> dict[str, Any]:
        server = server_of(request)
        if body.name in server.pool:
            raise ApiError(409, f"an adapter named {body.name!r} is already served; DELETE /adapters/{body.name} "
                                "first or pick another name")
        try:
            await server.on_worker(server.pool.register, body.name, body.path)
        except (ConfigError, AdapterError, DataError) as error:
            raise ApiError(422, f"cannot load adapter {body.name!r} from {body.path!r}: {error}") from None
        server._update_pool_metrics()
        return next(a for a in server.pool.describe() if a["name"] == body.name)

    @app.delete("/adapters/{name}")
    async def delete_adapter(name: str, request: Request) -> dict[str, Any]:
        server = server_of(request)
        try:
            await server.on_worker(server.pool.unregister, name)
        except UnknownAdapter as error:
            raise ApiError(404, str(error)) from None
        server._update_pool_metrics()
        return {"deleted": name}

    @app.post("/predict")
    async def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        server = server_of(request)
        limit = server.config.max_inputs
        if not body.inputs:
            raise ApiError(422, '"inputs" is empty; send at least one input')
        if len(body.inputs) > limit:
            raise ApiError(413, f'{len(body.inputs)} inputs in one request, more than --max-inputs {limit}; '
                                "split the request")
        examples = [server.check(i, item) for i, item in enumerate(body.inputs)]
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(server.encoder, server.encode, examples)
        try:
            results = await server.batcher.submit(rows)
        except ShuttingDown as error:
            raise ApiError(503, str(error)) from None
        except UnknownAdapter as error:
            raise ApiError(404, str(error)) from None
        for row in rows:
            server.metrics.examples.labels(row.adapter).inc()
        return {"results": results}


def _problem(problem: dict[str, Any]) -> str:
    """One validation problem as `inputs[2].text: Input should be a valid string`."""
    where = ""
    for part in problem.get("loc", ())[1:]:  # drop "body"
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    message = problem.get("msg", "invalid")
    if problem.get("type") == "missing":
        message = "missing field"
    elif problem.get("type") == "extra_forbidden":
        message = "unknown field (allowed: adapter, text, text_pair, question, context; or name, path)"
    return f"{where or 'body'}: {message}"

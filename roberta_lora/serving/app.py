"""The FastAPI application: /predict, /adapters, /health, /metrics over one engine, pool and batcher.

Threads: the event loop only moves bytes and bookkeeping; bodies are parsed and validated on a "parse"
thread, tokenized on one "encode" thread (its own tokenizer copy), and one "engine" thread runs every
batch and every adapter load or removal, so the engine and the pool's memory are only touched by one
thread. Every request runs under `--request-timeout-s` (504), and a request whose client hung up is
cancelled, so its queued examples are dropped before they are computed. `Guard` (guard.py) checks keys
and the body size before a route runs; access.py says who may load what.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from roberta_lora.data.tokenizer import load_tokenizer
from roberta_lora.errors import RobertaLoraError, first_line
from roberta_lora.serving import schema
from roberta_lora.serving.access import AdapterSources, RefusedSource
from roberta_lora.serving.batcher import Batcher, ShuttingDown
from roberta_lora.serving.config import ServeConfig
from roberta_lora.serving.engine import Encoded, Engine, Example, build_engine, encode_example
from roberta_lora.serving.guard import Guard, GuardSettings
from roberta_lora.serving.metrics import ServerMetrics
from roberta_lora.serving.pool import (
    AdapterPool,
    DuplicateAdapter,
    ReplacedAdapter,
    UnknownAdapter,
    check_name,
)
from roberta_lora.serving.schema import ApiError, RequestModels

logger = logging.getLogger("roberta_lora.serving")

class Server:
    """The engine, pool, batcher, metrics and executors of one app."""

    def __init__(self, config: ServeConfig, engine: Engine) -> None:
        config.validate()
        self.config, self.engine = config, engine
        self.metrics = ServerMetrics()
        self.models = RequestModels(config.max_inputs, config.max_text_chars)
        self.sources = AdapterSources(config.adapter_roots, config.allow_hub_adapters)
        budget = config.max_adapter_memory_mb
        self.pool = AdapterPool(engine, None if budget is None else int(budget * 2**20))
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self.parser = ThreadPoolExecutor(2, thread_name_prefix="parse")
        self.encode_tokenizer = load_tokenizer(config.model)  # the encode thread's own copy
        self._seen = (0, 0)  # pool loads and evictions already counted
        self._pending: set[str] = set()  # names being loaded right now (a second load of one is 409)
        self.batcher = Batcher(self.run_batch, self.worker, config.batch_window_ms / 1000,
                               config.max_batch_tokens, self.metrics)

    def register_startup_adapters(self) -> None:
        """The operator's --adapter NAME=DIR (trusted sources; any folder or hub id). Raises on the first bad one."""
        from roberta_lora.sources import resolve_adapter

        for name, source in self.config.adapters.items():
            check_name(name)
            self.pool.register(name, resolve_adapter(source))
        self.update_pool_metrics()

    async def on(self, executor: ThreadPoolExecutor, function, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    def run_batch(self, rows: list[Encoded]) -> list[Any]:
        """On the engine thread: load what the rows need, then one forward pass; a row whose adapter version
        is gone gets its error instead (never another adapter's answer)."""
        gone = self.pool.ensure([r.adapter for r in rows])
        self.update_pool_metrics()
        live = [r for r in rows if r.adapter not in gone]
        answers = self.engine.predict(live) if live else []
        if len(answers) != len(live):
            raise RuntimeError(f"internal error: the engine answered {len(answers)} of {len(live)} rows")
        by_row = dict(zip(map(id, live), answers, strict=True))
        results = []
        for row in rows:
            if row.adapter in gone:
                try:
                    self.pool.check_current(row.adapter)
                    raise UnknownAdapter(f"adapter {row.adapter!r} was removed while the request waited")
                except (UnknownAdapter, ReplacedAdapter) as error:
                    results.append(error)
            else:
                results.append(by_row[id(row)])
        return results

    def update_pool_metrics(self) -> None:
        self.metrics.adapters_loaded.set(len(self.pool.loaded))
        loads, evictions = self.pool.loads, self.pool.evictions
        self.metrics.adapter_loads.inc(loads - self._seen[0])
        self.metrics.adapter_evictions.inc(evictions - self._seen[1])
        self._seen = (loads, evictions)

    def check(self, index: int, item: Any) -> tuple[Example, Any]:
        """The example of `inputs[index]` and the adapter version it is answered by, or an ApiError."""
        where = f"inputs[{index}]"
        try:
            version = self.pool.version(item.adapter)
        except UnknownAdapter as error:
            raise ApiError(404, f"{where}: {error}", f"{where}.adapter") from None
        if version.config.task_type == "glue":
            needed, wrong = ["text"], ["question", "context"]
            hint = 'a GLUE adapter: give "text" (and "text_pair" for sentence pairs)'
        else:
            needed, wrong = ["question", "context"], ["text", "text_pair"]
            hint = 'a SQuAD adapter: give "question" and "context"'
        for name in needed:
            if getattr(item, name) is None:
                raise ApiError(422, f'{where}: missing "{name}"; adapter {item.adapter!r} is {hint}', f"{where}.{name}")
        for name in wrong:
            if getattr(item, name) is not None:
                raise ApiError(422, f'{where}: "{name}" does not apply; adapter {item.adapter!r} is {hint}',
                               f"{where}.{name}")
        return Example(**item.model_dump()), version

    def encode(self, checked: list[tuple[Example, Any]]) -> list[Encoded]:
        """On the encode thread: tokenize (SQuAD: windows) and refuse examples larger than a batch."""
        rows = []
        for index, (example, version) in enumerate(checked):
            row = encode_example(self.encode_tokenizer, example, version.config)
            row.adapter = version.key  # the rows run on the version they were checked against
            if row.tokens > self.config.max_batch_tokens:
                raise ApiError(413, f"inputs[{index}] needs {row.tokens} padded tokens, more than one batch holds "
                                    f"(--max-batch-tokens {self.config.max_batch_tokens}); send a shorter text",
                               f"inputs[{index}]")
            rows.append(row)
        return rows

    def load(self, name: str, source: str) -> dict[str, Any]:
        """On the engine thread: a run-time load from the allowed sources (RefusedSource, AdapterError...)."""
        directory = self.sources.resolve(source)
        self.pool.register(name, directory)
        self.update_pool_metrics()
        return self.pool.describe_one(name)

    def unload(self, name: str) -> None:
        self.pool.unregister(name)
        self.update_pool_metrics()

    async def run_request(self, request: Request, handler) -> Any:
        """Read the body, then `handler(body)`, within --request-timeout-s (504); cancelled (queued work
        dropped) when the client disconnects."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        try:
            body = await asyncio.wait_for(request.body(), self.config.request_timeout_s)
        except TimeoutError:
            raise self._timeout() from None
        work = asyncio.ensure_future(handler(body))
        gone = asyncio.ensure_future(_disconnected(request))
        done, _ = await asyncio.wait({work, gone}, timeout=max(0.0, deadline - loop.time()),
                                     return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if work in done:
            return work.result()
        work.cancel()
        if gone in done:
            return Response(status_code=499)  # nobody reads it; counted as "client closed request"
        raise self._timeout()

    def _timeout(self) -> ApiError:
        return ApiError(504, f"the request took longer than --request-timeout-s {self.config.request_timeout_s:g}; "
                             "send fewer inputs or retry later")


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (after the body was read, the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def build_server(config: ServeConfig, engine: Engine | None = None) -> Server:
    """Validate `config`, build the engine (unless given) and load the start-up adapters; every mistake is
    a RobertaLoraError raised here, before any port is opened."""
    from roberta_lora.model.config import read_adapter_config
    from roberta_lora.runtime import resolve_device, resolve_dtype
    from roberta_lora.sources import resolve_adapter

    config.validate()
    AdapterSources(config.adapter_roots, config.allow_hub_adapters)  # roots that are not folders
    resolve_dtype(config.dtype, resolve_device(config.device))
    for name, source in config.adapters.items():  # cheap checks first: a typo fails before the model loads
        check_name(name)
        read_adapter_config(resolve_adapter(source))
    built = engine or build_engine(config.engine, config.model, config.device, config.dtype)
    server = Server(config, built)
    server.register_startup_adapters()
    return server


def create_app(config: ServeConfig, engine: Engine | None = None, server: Server | None = None) -> FastAPI:
    """The application. Without `server`, it is built at startup (lifespan) from `config` and `engine`;
    shutdown answers every queued example before returning."""
    config.validate()
    state: dict[str, Server] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        current = server or await asyncio.to_thread(build_server, config, engine)
        current.batcher.start()
        state["server"] = app.state.server = current
        try:
            yield
        finally:
            await current.batcher.close()
            for executor in (current.worker, current.encoder, current.parser):
                executor.shutdown(wait=True)

    app = FastAPI(title="roberta-lora serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    settings = GuardSettings(config.api_key, config.admin_key, int(config.max_body_mb * 2**20))
    app.add_middleware(Guard, settings=settings, metrics=lambda: state["server"].metrics if state else None)
    add_routes(app)
    models = RequestModels(config.max_inputs, config.max_text_chars)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = schema.patch_openapi(document, models, keyed=config.api_key is not None)
        return app.openapi_schema

    app.openapi = openapi
    return app


def json_response(value: Any, status: int = 200) -> Response:
    return Response(schema.json_content(value), status_code=status, media_type="application/json")


def error_response(error: ApiError) -> Response:
    return Response(schema.error_content(str(error), error.field), status_code=error.status,
                    media_type="application/json", headers=error.headers)


def add_routes(app: FastAPI) -> None:
    """Endpoints and error handlers (every error in the one shape of `schema.ErrorBody`)."""

    def server_of(request: Request) -> Server:
        return request.app.state.server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error_response(error)

    @app.exception_handler(RobertaLoraError)
    async def toolkit_error(request: Request, error: RobertaLoraError) -> Response:
        return error_response(ApiError(422, first_line(error)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        headers = dict(error.headers or {})
        if error.status_code == 405:  # every method the path takes (FastAPI's route for one method lists only it)
            methods = {m for route in request.app.routes if getattr(route, "path_regex", None) is not None
                       and route.path_regex.match(request.url.path) for m in getattr(route, "methods", ()) or ()}
            headers["allow"] = ", ".join(sorted(methods - {"HEAD"}))
        message = {404: f"no such endpoint; the endpoints are {', '.join(ENDPOINTS)}",
                   405: f"this endpoint takes only {headers.get('allow')}"}.get(error.status_code, str(error.detail))
        return error_response(ApiError(error.status_code, message, headers=headers))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        problems = error.errors()
        where = schema.location(problems[0].get("loc", ())[1:]) if problems else None
        return error_response(ApiError(422, f"{where or 'request'}: {problems[0].get('msg', 'invalid') if problems else ''}",
                                       where or None))

    @app.get("/health", response_model=schema.HealthResponse)
    async def health(request: Request) -> Response:
        server = server_of(request)
        return json_response({"status": "ok", "engine": type(server.engine).__name__, "adapters": len(server.pool),
                              "loaded": server.pool.loaded})

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    async def metrics(request: Request) -> Response:
        return Response(server_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/adapters", response_model=schema.AdapterList)
    async def list_adapters(request: Request) -> Response:
        return json_response({"adapters": server_of(request).pool.describe()})

    @app.post("/adapters", status_code=201, response_model=schema.AdapterInfo)
    async def add_adapter(request: Request) -> Response:
        server = server_of(request)

        async def handle(body: bytes) -> Response:
            parsed = await server.on(server.parser, server.models.parse, body, server.models.adapter)
            name = parsed.name
            if name in server.pool or name in server._pending:
                raise ApiError(409, f"an adapter named {name!r} is already served (or being loaded); DELETE "
                                    f"/adapters/{name} first or pick another name", "name")
            server._pending.add(name)
            job = asyncio.get_running_loop().run_in_executor(server.worker, server.load, name, parsed.path)
            job.add_done_callback(lambda _: server._pending.discard(name))  # also when this request is cancelled
            try:
                described = await asyncio.shield(job)
            except RefusedSource as error:
                logger.warning("refused to load adapter %r: %s", name, error.detail)
                raise ApiError(404, f"cannot load adapter {name!r}: {error.reason}", "path") from None
            except DuplicateAdapter:
                raise ApiError(409, f"an adapter named {name!r} is already served", "name") from None
            except (RobertaLoraError, OSError) as error:
                logger.warning("adapter %r is not valid: %s", name, first_line(error, None))
                raise ApiError(422, f"cannot load adapter {name!r}: not a valid adapter for this server (the "
                                    "server's log says why)", "path") from None
            return json_response(described, 201)

        return await server.run_request(request, handle)

    @app.delete("/adapters/{name}", response_model=schema.Deleted)
    async def delete_adapter(name: str, request: Request) -> Response:
        server = server_of(request)
        try:
            await server.on(server.worker, server.unload, name)
        except UnknownAdapter as error:
            raise ApiError(404, str(error), "name") from None
        return json_response({"deleted": name})

    @app.post("/predict", response_model=schema.PredictResponse)
    async def predict(request: Request) -> Response:
        server = server_of(request)

        async def handle(body: bytes) -> Response:
            parsed = await server.on(server.parser, server.models.parse, body, server.models.predict)
            checked = [server.check(i, item) for i, item in enumerate(parsed.inputs)]
            rows = await server.on(server.encoder, server.encode, checked)
            try:
                results = await server.batcher.submit(rows)
            except ShuttingDown as error:
                raise ApiError(503, str(error)) from None
            except UnknownAdapter as error:
                raise ApiError(404, str(error)) from None
            except ReplacedAdapter as error:
                raise ApiError(409, str(error)) from None
            for _example, version in checked:
                server.metrics.examples.labels(version.name).inc()
            return json_response({"results": results})

        return await server.run_request(request, handle)


ENDPOINTS = ("GET /health", "GET /metrics", "GET /adapters", "POST /adapters", "DELETE /adapters/{name}",
             "POST /predict")


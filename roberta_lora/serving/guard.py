"""`Guard`: the ASGI middleware every request passes first: keys, the body limit, counting, internal errors.

It sits outside FastAPI's routing and exception handling, so it sees every response: a 401 it sends
itself, a 404 of the router, a 413 of the body limit and a 500 of a bug are all counted in `/metrics`.
Work is refused before it is done: the key is checked before the body is read, a `Content-Length` over
the limit is answered 413 without reading a byte, and a chunked body is cut off as soon as it passes the
limit. An exception that escapes a route is logged with its traceback (the server's log) and answered
with a generic 500 that shows no message, path or code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from roberta_lora.serving.access import key_matches
from roberta_lora.serving.metrics import ServerMetrics
from roberta_lora.serving.schema import ApiError, error_content

logger = logging.getLogger("roberta_lora.serving")

KNOWN_PATHS = ("/health", "/metrics", "/adapters", "/predict", "/openapi.json")


class BodyTooLarge(Exception):
    """A chunked body grew past the limit while it was read."""


@dataclass
class GuardSettings:
    api_key: str | None
    admin_key: str | None
    max_body_bytes: int


def endpoint_label(method: str, path: str) -> str:
    """The metrics label of a request: its route, or "other" (client-chosen paths never become labels)."""
    if path.startswith("/adapters/") and path.count("/") == 2:
        return f"{method} /adapters/{{name}}"
    return f"{method} {path}" if path in KNOWN_PATHS else f"{method} other"


def is_admin(method: str, path: str) -> bool:
    return (method == "POST" and path == "/adapters") or (method == "DELETE" and path.startswith("/adapters/"))


class Guard:
    """ASGI middleware; `metrics()` returns the server's metrics once it runs (None before start-up)."""

    def __init__(self, app: Any, settings: GuardSettings, metrics: Callable[[], ServerMetrics | None]) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        started, status = time.monotonic(), [0]

        async def watched_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
            refusal = self._authorize(method, path, headers.get("authorization")) or self._length(headers)
            if refusal is not None:
                await respond(watched_send, refusal)
            else:
                await self.app(scope, self._counting(receive), watched_send)
        except BodyTooLarge:
            if not status[0]:
                await respond(watched_send, self._too_large())
        except Exception:
            logger.exception("internal error answering %s", endpoint_label(method, path))
            if not status[0]:
                await respond(watched_send, ApiError(500, "internal error; only this request failed and the server "
                                                          "keeps running (the server's log has the details)"))
        finally:
            self._count(endpoint_label(method, path), status[0] or 499, time.monotonic() - started)

    def _authorize(self, method: str, path: str, header: str | None) -> ApiError | None:
        if path == "/health":
            return None
        api, admin = self.settings.api_key, self.settings.admin_key
        challenge = {"www-authenticate": "Bearer"}
        if is_admin(method, path):
            if admin is None:
                return ApiError(403, "loading and unloading adapters at run time is disabled; start the server with "
                                     "--admin-key KEY (and --adapter-root DIR) to allow it")
            if not key_matches(header, admin):
                return ApiError(401, "this needs the admin key: send Authorization: Bearer <admin key>",
                                headers=challenge)
            return None
        if api is not None and not (key_matches(header, api) or (admin is not None and key_matches(header, admin))):
            return ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>", headers=challenge)
        return None

    def _length(self, headers: dict[str, str]) -> ApiError | None:
        value = headers.get("content-length")
        if value is None:
            return None
        if not (value.isascii() and value.strip().isdigit()):  # "²" and "١٢" are str.isdigit() too
            return ApiError(400, f"Content-Length {value[:40]!r} is not a number of bytes")
        if int(value) > self.settings.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        limit = self.settings.max_body_bytes / 2**20
        return ApiError(413, f"the body is larger than --max-body-mb {limit:g} MB; send fewer or shorter inputs",
                        headers={"connection": "close"})

    def _counting(self, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
        limit, seen = self.settings.max_body_bytes, [0]

        async def counted() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise BodyTooLarge()
            return message

        return counted

    def _count(self, endpoint: str, status: int, seconds: float) -> None:
        metrics = self.metrics()
        if metrics is None:
            return
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            metrics.errors.labels(str(status)).inc()


async def respond(send: Callable, error: ApiError) -> None:
    """Send `error` as the one error shape, from the middleware (outside FastAPI)."""
    body = error_content(str(error), error.field)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""The HTTP contract: request bodies (with the limits of this server), the one error shape, and the
OpenAPI document, which lists every status code and body the server sends.

Request bodies are parsed here, off the event loop (`parse_body` runs on a worker thread): the body is
decoded with Python's JSON parser (so a lone surrogate such as `"\\ud800"` reaches validation and is
refused naming its field), then validated by the pydantic models below, whose constraints are the
server's own: what the schema allows is what the server accepts.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from roberta_lora.choices import VISIBLE_CHARACTER
from roberta_lora.serving.pool import NAME_PATTERN

# A text must hold at least one visible character: not only whitespace, control or zero-width characters.
VISIBLE = VISIBLE_CHARACTER
TEXT_FIELDS = ("text", "text_pair", "question", "context")
MAX_SOURCE_CHARS = 4096


class ApiError(Exception):
    """A client error: HTTP `status` with `{"error": message, "field": field}`."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.field, self.headers = status, field, headers or {}


class ErrorBody(BaseModel):
    """Every error the server sends, 4xx and 5xx alike."""

    error: str = Field(description="what was wrong and how to fix it")
    field: str | None = Field(description='the request field at fault, e.g. "inputs[0].text"; null when none')


def error_content(message: str, field: str | None = None) -> bytes:
    """The bytes of an error body; ASCII-escaped, so no client text can make it fail to encode."""
    return json.dumps({"error": message, "field": field}, ensure_ascii=True).encode("ascii")


def json_content(value: Any) -> bytes:
    """A success body: non-finite numbers become null (JSON has no NaN), ASCII-escaped."""
    return json.dumps(_finite(value), ensure_ascii=True, allow_nan=False).encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class RequestModels:
    """The request bodies of one server, with its limits (`--max-inputs`, `--max-text-chars`)."""

    def __init__(self, max_inputs: int, max_text_chars: int) -> None:
        self.max_inputs, self.max_text_chars = max_inputs, max_text_chars
        strict = ConfigDict(extra="forbid", strict=True)
        name = (str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN.pattern,
                           description="an adapter name served by this server"))
        text = (str | None, Field(None, min_length=1, max_length=max_text_chars, pattern=VISIBLE))
        self.input = create_model(
            "PredictInput", __config__=strict, adapter=name,
            **{f: (text[0], Field(None, min_length=1, max_length=max_text_chars, pattern=VISIBLE,
                                  description=DESCRIPTIONS[f])) for f in TEXT_FIELDS})
        self.predict = create_model(
            "PredictRequest", __config__=strict,
            inputs=(list[self.input], Field(min_length=1, max_length=max_inputs,
                                            description=f"1 to {max_inputs} inputs, answered in order")))
        self.adapter = create_model(
            "AdapterRequest", __config__=strict, name=name,
            path=(str, Field(min_length=1, max_length=MAX_SOURCE_CHARS,
                             description="a folder under one of the server's --adapter-root folders (relative "
                                         "to it), or a hub id user/name[@rev] with --allow-hub-adapters")))

    def parse(self, body: bytes, model: type[BaseModel]) -> BaseModel:
        """Decode and validate `body`, or ApiError (400 not JSON, 413 over a limit, 422 invalid)."""
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ApiError(400, f"the body is not UTF-8 (byte {error.start}); send UTF-8 JSON") from None
        except (ValueError, RecursionError) as error:
            detail = getattr(error, "msg", None) or "nested too deeply"
            raise ApiError(400, f"the body is not valid JSON ({detail}); send e.g. "
                                '{"inputs": [{"adapter": "sst2", "text": "..."}]}') from None
        try:
            return model.model_validate(data)
        except ValidationError as error:
            raise self._api_error(error.errors(include_url=False, include_input=False)) from None

    def _api_error(self, problems: list[dict[str, Any]]) -> ApiError:
        first = problems[0]
        where = location(first.get("loc", ()))
        kind = first.get("type", "")
        field = where.rsplit(".", 1)[-1] if where else ""
        if kind == "too_long" and where == "inputs":
            count = first.get("ctx", {}).get("actual_length", f"more than {self.max_inputs}")
            return ApiError(422, f"{count} inputs in one request, more than --max-inputs {self.max_inputs}; split "
                                 "the request", where)
        if kind == "string_too_long" and field in TEXT_FIELDS:
            return ApiError(422, f'{where} is longer than the limit of {self.max_text_chars} characters '
                                 "(--max-text-chars); send a shorter text", where)
        if kind == "string_unicode":
            return ApiError(422, f"{where} is not valid Unicode text (it holds a lone surrogate such as \\ud800); "
                                 "send UTF-8 text", where)
        if kind in ("string_pattern_mismatch", "string_too_short") and field in TEXT_FIELDS:
            return ApiError(422, f"{where} is empty (only whitespace, control or zero-width characters); give "
                                 "some text", where)
        if kind == "string_pattern_mismatch" and field in ("adapter", "name"):
            from roberta_lora.serving.pool import NAME_RULE

            return ApiError(422, f"{where} is not a valid adapter name; use {NAME_RULE}", where)
        if kind == "too_short" and where == "inputs":
            return ApiError(422, '"inputs" is empty; send at least one input', where)
        message = first.get("msg", "invalid")
        if kind == "missing":
            message = "missing field"
        elif kind == "extra_forbidden":
            message = ("unknown field (allowed: adapter, text, text_pair, question, context in an input; inputs; "
                       "or name, path)")
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return ApiError(422, f"{where or 'body'}: {message}{more}", where or None)


DESCRIPTIONS = {
    "text": "GLUE: the text (the first sentence of a pair)",
    "text_pair": "GLUE: the second sentence, for sentence-pair tasks",
    "question": "SQuAD: the question",
    "context": "SQuAD: the passage to answer from",
}


def location(loc: tuple | list) -> str:
    """A pydantic location as `inputs[2].text`; the key of an unknown field is shown escaped."""
    where = ""
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
        else:
            text = str(part).encode("ascii", "backslashreplace").decode("ascii")[:80]
            where += f".{text}" if where else text
    return where


# ----------------------------------------------------------------------------- the OpenAPI document
ERRORS = {
    400: "the body is not JSON", 401: "a missing or wrong API key (Authorization: Bearer KEY)",
    403: "run-time adapter loading is disabled (start the server with --admin-key)",
    404: "an adapter that is not served, or a source not found under the adapter roots",
    409: "an adapter name already served, or replaced while the request waited",
    413: "a body over --max-body-mb, or an input over --max-batch-tokens once tokenized",
    422: "a request that does not fit the schema (types, names, --max-inputs, --max-text-chars, empty text)",
    499: "the client closed the connection before the answer", 503: "the server is shutting down",
    504: "the request took longer than --request-timeout-s", 500: "an internal error (only this request failed)",
}
# Status codes each operation can send, besides 200/201.
OPERATION_ERRORS = {
    ("get", "/health"): (500,),
    ("get", "/metrics"): (401, 500),
    ("get", "/adapters"): (401, 500),
    ("post", "/adapters"): (400, 401, 403, 404, 409, 413, 422, 500, 503, 504),
    ("delete", "/adapters/{name}"): (401, 403, 404, 422, 500, 503, 504),
    ("post", "/predict"): (400, 401, 404, 409, 413, 422, 500, 503, 504),
}


def patch_openapi(document: dict[str, Any], models: RequestModels, keyed: bool) -> dict[str, Any]:
    """Add request bodies, error responses and the security scheme to FastAPI's generated document."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (models.predict, models.adapter, ErrorBody):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    bodies = {("post", "/predict"): "PredictRequest", ("post", "/adapters"): "AdapterRequest"}
    document.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for (method, path), codes in OPERATION_ERRORS.items():
        operation = document["paths"][path][method]
        if (method, path) in bodies:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{bodies[method, path]}"}}}}
        responses = operation.setdefault("responses", {})
        responses.pop("422", None)
        for code in codes:
            responses[str(code)] = {"description": ERRORS[code], "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        if path != "/health" and keyed:
            operation["security"] = [{"bearer": []}]
    return document


# ----------------------------------------------------------------------------- success bodies (documentation)
class ClassResult(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="its probability")
    scores: dict[str, float] = Field(description="every class's probability")


class ScoreResult(BaseModel):
    score: float | None = Field(description="the regression output (STS-B: similarity)")


class SpanResult(BaseModel):
    answer: str = Field(description='the answer span ("" = no answer, SQuAD v2)')
    null_odds: float | None = None
    nbest: list[dict[str, Any]] = Field(default_factory=list)


class PredictResponse(BaseModel):
    results: list[ClassResult | ScoreResult | SpanResult] = Field(description="one result per input, in order")


class HealthResponse(BaseModel):
    status: str
    engine: str
    adapters: int
    loaded: list[str]


class AdapterInfo(BaseModel):
    name: str
    task: str | None
    task_type: str
    labels: list[str]
    rank: int
    method: str
    size_bytes: int
    loaded: bool
    metrics: dict[str, Any]


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]


class Deleted(BaseModel):
    deleted: str

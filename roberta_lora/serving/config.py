"""`ServeConfig`: what a server is started with, validated once (every number finite and in range)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from roberta_lora.errors import ConfigError
from roberta_lora.serving.access import check_key

# (field, lowest, highest, whether the lowest is allowed): every number a server is started with.
LIMITS = (
    ("batch_window_ms", 0.0, 1000.0, True),
    ("max_batch_tokens", 1, 1_048_576, True),
    ("max_inputs", 1, 10_000, True),
    ("max_text_chars", 1, 1_000_000, True),
    ("max_adapter_memory_mb", 0.0, 1_048_576.0, False),
    ("max_body_mb", 0.0, 1024.0, False),
    ("request_timeout_s", 0.0, 3600.0, False),
    ("keep_alive_s", 0.0, 3600.0, False),
)

# How long an idle keep-alive connection stays open by default: longer than the idle time after which pooled
# clients stop reusing one (httpx 5 s, aiohttp 15 s). With uvicorn's own 5 s, server and httpx expire a
# connection together, and a client can send a request on a connection the server is closing at that moment
# (it sees a read error, not an answer). Behind a load balancer, --keep-alive-s must exceed its idle timeout.
KEEP_ALIVE_S = 20.0


@dataclass
class ServeConfig:
    """What `roberta-lora serve` was asked for (see the CLI's help for each field).

    Safe defaults: no run-time loads (no admin key, no roots, no hub), a 4 MB body limit, 60 s per request.
    """

    model: str
    adapters: dict[str, str] = field(default_factory=dict)  # name -> folder or hub id (the operator's: trusted)
    engine: str = "mixed"
    batch_window_ms: float = 5.0
    max_batch_tokens: int = 8192
    max_inputs: int = 64
    max_text_chars: int = 20_000
    max_adapter_memory_mb: float | None = None
    api_key: str | None = None
    admin_key: str | None = None
    adapter_roots: list[str] = field(default_factory=list)
    allow_hub_adapters: bool = False
    max_body_mb: float = 4.0
    request_timeout_s: float = 60.0
    keep_alive_s: float = KEEP_ALIVE_S
    device: str = "auto"
    dtype: str = "float32"

    def validate(self) -> None:
        """Raise ConfigError listing every problem: numbers finite and in range, keys usable."""
        problems = []
        for name, low, high, inclusive in LIMITS:
            value = getattr(self, name)
            if value is None and name == "max_adapter_memory_mb":
                continue
            flag = "--" + name.replace("_", "-")
            integer = isinstance(low, int)
            kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not kind_ok:
                problems.append(f"{flag} must be {'an integer' if integer else 'a number'}, got {value!r}")
            elif not math.isfinite(value) or not (low <= value if inclusive else low < value) or value > high:
                bound = f"{'>=' if inclusive else '>'} {low:g} and <= {high:g}"
                problems.append(f"{flag} must be finite, {bound}; got {value!r}")
        for name, flag in (("api_key", "--api-key"), ("admin_key", "--admin-key")):
            try:
                check_key(getattr(self, name), flag)
            except ConfigError as error:
                problems.append(str(error))
        if self.engine not in ("mixed", "grouped"):
            problems.append(f"--engine {self.engine!r} is not one of 'mixed', 'grouped'")
        if problems:
            raise ConfigError("; ".join(problems))

    def uvicorn_options(self) -> dict:
        """How uvicorn runs the app, for `serve` and the tests alike (call after `validate`)."""
        return {"timeout_keep_alive": float(self.keep_alive_s), "timeout_graceful_shutdown": 30}

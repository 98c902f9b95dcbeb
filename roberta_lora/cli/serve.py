"""CLI: `serve`, one base and many adapters answered over HTTP (FastAPI + uvicorn, dynamic batching)."""

from __future__ import annotations

import argparse
import os
import sys

from roberta_lora.choices import DTYPES
from roberta_lora.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve adapters of one base over HTTP with dynamic mixed-adapter batching",
        description="Load one frozen base and every --adapter, then answer POST /predict (each input names its "
                    "adapter; inputs arriving within --batch-window-ms share one forward pass), GET/POST/DELETE "
                    "/adapters, GET /health and GET /metrics (Prometheus). Needs the serve extra: "
                    'pip install -e ".[serve]".',
    )
    serve.add_argument("--model", required=True, metavar="BASE",
                       help="the base every adapter runs on: a folder, a packaged model name or a hub id")
    serve.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                       help="serve the adapter in folder (or hub repo user/name) DIR as NAME; repeat for more")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; another address without "
                            "--api-key prints a warning)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--engine", choices=("mixed", "grouped"), default="mixed",
                       help="mixed: every row in one pass (BatchedAdapters); "
                            "grouped: one sub-batch per adapter (default mixed)")
    serve.add_argument("--device", default="auto", metavar="DEVICE",
                       help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")
    serve.add_argument("--dtype", choices=DTYPES, default="float32",
                       help="weights of the base and the adapters (default float32; float16 needs CUDA)")
    keys = serve.add_argument_group("access (safe defaults: loopback, no run-time loads)")
    keys.add_argument("--api-key", default=None, metavar="KEY",
                      help="require Authorization: Bearer KEY on every endpoint but /health (or set "
                           "ROBERTA_LORA_API_KEY, which keeps the key out of the process list)")
    keys.add_argument("--admin-key", default=None, metavar="KEY",
                      help="allow POST / DELETE /adapters at run time, with this key (or ROBERTA_LORA_ADMIN_KEY); "
                           "without it run-time loading and unloading are off (403)")
    keys.add_argument("--adapter-root", action="append", default=[], metavar="DIR",
                      help="folder whose adapter folders POST /adapters may load (repeatable); paths are resolved, "
                           "links included, and refused outside every root")
    keys.add_argument("--allow-hub-adapters", action="store_true",
                      help="let POST /adapters load hub ids user/name[@rev] (from the hub cache when offline)")
    limits = serve.add_argument_group("limits (each refused with a 4xx before the work is done)")
    limits.add_argument("--batch-window-ms", type=float, default=5.0, metavar="MS",
                        help="how long the first queued input waits for others to share its batch (0-1000, default 5)")
    limits.add_argument("--max-batch-tokens", type=int, default=8192, metavar="N",
                        help="padded tokens per forward pass (default 8192); a longer input is refused with 413")
    limits.add_argument("--max-inputs", type=int, default=64, metavar="N", help="inputs per request (default 64)")
    limits.add_argument("--max-text-chars", type=int, default=20_000, metavar="N",
                        help="characters per text, question or context (default 20000)")
    limits.add_argument("--max-body-mb", type=float, default=4.0, metavar="MB",
                        help="request body size (default 4); larger bodies get 413 before they are read")
    limits.add_argument("--request-timeout-s", type=float, default=60.0, metavar="S",
                        help="time a request may take, body upload included, before it gets 504 (default 60)")
    limits.add_argument("--keep-alive-s", type=float, default=20.0, metavar="S",
                        help="how long an idle keep-alive connection stays open (default 20; behind a load "
                             "balancer, more than its idle timeout)")
    limits.add_argument("--max-adapter-memory-mb", type=float, default=None, metavar="MB",
                        help="memory for loaded adapters; the least recently used are dropped and reloaded on "
                             "demand (default: no limit)")
    serve.set_defaults(handler=run_serve)


def parse_adapters(values: list[str]) -> dict[str, str]:
    """NAME=DIR pairs -> {name: dir}, refusing malformed and repeated names."""
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, source = value.partition("=")
        if not sep or not name or not source:
            raise ConfigError(f"--adapter {value!r} is not NAME=DIR; e.g. --adapter sst2=runs/sst2/adapter")
        if name in adapters:
            raise ConfigError(f"--adapter names {name!r} twice; give each adapter its own name")
        adapters[name] = source
    return adapters


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {port}")


def run_serve(args: argparse.Namespace) -> int:
    adapters = parse_adapters(args.adapter)
    check_port(args.port)
    api_key = args.api_key if args.api_key is not None else os.environ.get("ROBERTA_LORA_API_KEY") or None
    admin_key = args.admin_key if args.admin_key is not None else os.environ.get("ROBERTA_LORA_ADMIN_KEY") or None
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise ConfigError(f"serving needs fastapi and uvicorn ({error.name} is missing); run "
                          'pip install -e ".[serve]" in the roberta-lora checkout') from None
    from roberta_lora.serving.access import is_loopback
    from roberta_lora.serving.config import ServeConfig

    config = ServeConfig(model=args.model, adapters=adapters, engine=args.engine,
                         batch_window_ms=args.batch_window_ms, max_batch_tokens=args.max_batch_tokens,
                         max_inputs=args.max_inputs, max_text_chars=args.max_text_chars,
                         max_adapter_memory_mb=args.max_adapter_memory_mb, api_key=api_key, admin_key=admin_key,
                         adapter_roots=args.adapter_root, allow_hub_adapters=args.allow_hub_adapters,
                         max_body_mb=args.max_body_mb, request_timeout_s=args.request_timeout_s,
                         keep_alive_s=args.keep_alive_s,
                         device=args.device, dtype=args.dtype)
    config.validate()  # every number and key, before the model is loaded
    from roberta_lora.serving.app import (  # torch-heavy: only once the flags are sound
        build_server,
        create_app,
    )

    server = build_server(config)  # a missing adapter or model, a wrong base: one line, exit 2
    if (args.adapter_root or args.allow_hub_adapters) and admin_key is None:
        print("roberta-lora serve: note: --adapter-root / --allow-hub-adapters do nothing without --admin-key "
              "(run-time loads are off)", file=sys.stderr)
    if not is_loopback(args.host) and api_key is None:
        print(f"roberta-lora serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              "port can use the server; pass --api-key (or set ROBERTA_LORA_API_KEY)", file=sys.stderr)
    uvicorn.run(create_app(config, server=server), host=args.host, port=args.port, log_level="info",
                **config.uvicorn_options())
    return 0

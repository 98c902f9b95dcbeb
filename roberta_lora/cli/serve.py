"""CLI: `serve`, one base and many adapters answered over HTTP (FastAPI + uvicorn, dynamic batching)."""

from __future__ import annotations

import argparse

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
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--engine", choices=("mixed", "grouped"), default="mixed",
                       help="mixed: every row in one pass (BatchedAdapters); "
                            "grouped: one sub-batch per adapter (default mixed)")
    serve.add_argument("--batch-window-ms", type=float, default=5.0, metavar="MS",
                       help="how long the first queued input waits for others to share its batch (default 5)")
    serve.add_argument("--max-batch-tokens", type=int, default=8192, metavar="N",
                       help="padded tokens per forward pass (default 8192); a longer input is refused with 413")
    serve.add_argument("--max-inputs", type=int, default=64, metavar="N",
                       help="inputs per request (default 64)")
    serve.add_argument("--max-text-chars", type=int, default=20_000, metavar="N",
                       help="characters per text, question or context (default 20000)")
    serve.add_argument("--max-adapter-memory-mb", type=float, default=None, metavar="MB",
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


def check_numbers(args: argparse.Namespace) -> None:
    problems = [f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}"
                for flag in ("max_batch_tokens", "max_inputs", "max_text_chars")
                if getattr(args, flag) <= 0]
    if args.batch_window_ms < 0:
        problems.append(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    if args.max_adapter_memory_mb is not None and args.max_adapter_memory_mb <= 0:
        problems.append(f"--max-adapter-memory-mb must be > 0, got {args.max_adapter_memory_mb}")
    if not 0 < args.port < 65536:
        problems.append(f"--port must be 1-65535, got {args.port}")
    if problems:
        raise ConfigError("; ".join(problems))


def run_serve(args: argparse.Namespace) -> int:
    adapters = parse_adapters(args.adapter)
    check_numbers(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise ConfigError(f"serving needs fastapi and uvicorn ({error.name} is missing); run "
                          'pip install -e ".[serve]" in the roberta-lora checkout') from None
    from roberta_lora.serving.app import ServeConfig, create_app  # torch-heavy: only when the command runs

    config = ServeConfig(model=args.model, adapters=adapters, engine=args.engine,
                         batch_window_ms=args.batch_window_ms, max_batch_tokens=args.max_batch_tokens,
                         max_inputs=args.max_inputs, max_text_chars=args.max_text_chars,
                         max_adapter_memory_mb=args.max_adapter_memory_mb)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=30)
    return 0

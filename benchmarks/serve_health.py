"""How long `/health` takes while another client sends large bodies to `/predict`.

A real `roberta-lora serve` app (toy base: the event loop is what is measured, not the model) on a loopback
port. One client polls `/health` as fast as it can; another sends, one after another, bodies of `--body-mb`
MB (a valid request whose text is over --max-text-chars, so each is received, parsed off the event loop,
and refused with 422). p50 / p99 / max of `/health` with and without the large bodies.

    python benchmarks/serve_health.py                 # 3 MB bodies, ~30 s
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import RESULTS_DIR, command_line, markdown_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body-mb", type=float, default=3.0, help="size of each large body (MB)")
    parser.add_argument("--bodies", type=int, default=20, help="large bodies sent, one after another")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the quiet baseline")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "serve_health.md")
    return parser.parse_args(argv)


def poll(url: str, stop: threading.Event, latencies: list[float]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/health").raise_for_status()
            latencies.append(1000 * (time.perf_counter() - started))


def summary(latencies: list[float]) -> list[str]:
    values = np.asarray(latencies)
    return [str(len(values)), f"{np.percentile(values, 50):.2f}", f"{np.percentile(values, 99):.2f}",
            f"{values.max():.2f}"]


def main(argv: list[str] | None = None) -> Path:
    import httpx
    import uvicorn

    from roberta_lora.model.toy import DEFAULT_CORPUS, make_toy_roberta
    from roberta_lora.model.wrapper import LoraWrapperRoberta
    from roberta_lora.serving.app import ServeConfig, create_app

    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = make_toy_roberta(Path(tmp) / "base", corpus=DEFAULT_CORPUS, seed=0)
        LoraWrapperRoberta(model_id=str(base), seed=0, task="sst2").save_adapter(Path(tmp) / "sst2")
        limit = 2 * args.body_mb + 1
        config = ServeConfig(model=str(base), adapters={"sst2": str(Path(tmp) / "sst2")}, max_body_mb=limit)
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        rows = []
        for label, busy in (("quiet", False), (f"while {args.body_mb:g} MB bodies arrive", True)):
            latencies: list[float] = []
            stop = threading.Event()
            poller = threading.Thread(target=poll, args=(url, stop, latencies))
            poller.start()
            if busy:
                text = "a " * int(args.body_mb * 2**20 / 2)
                body = json.dumps({"inputs": [{"adapter": "sst2", "text": text}]}).encode()
                with httpx.Client(base_url=url, timeout=60) as client:
                    for n in range(args.bodies):
                        status = client.post("/predict", content=body,
                                             headers={"content-type": "application/json"}).status_code
                        assert status == 422, status
                        print(f"  body {n + 1}/{args.bodies}", flush=True)
            else:
                time.sleep(args.seconds)
            stop.set()
            poller.join()
            rows.append([label, *summary(latencies)])
        server.should_exit = True
        thread.join(timeout=30)
    table = markdown_table(["/health", "requests", "p50 ms", "p99 ms", "max ms"], rows)
    text = (f"# /health latency while large bodies arrive\n\nCommand: `{command_line('serve_health.py', argv)}`\n\n"
            f"One client polls /health; another sends {args.bodies} bodies of {args.body_mb:g} MB to /predict, one "
            "after another (each read, parsed on a worker thread and refused with 422).\n\n"
            f"{table}\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    return args.output


if __name__ == "__main__":
    main()

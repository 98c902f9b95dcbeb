"""Serving many adapters on one base: examples/s and latency of `roberta-lora serve` under load.

Three ways to answer a stream of small requests (one sentence each) spread over N adapters, all through
the same HTTP server, batcher and tokenization, so only the forward differs:

- mixed:   `roberta-lora serve` (one forward pass per batch, each row with its own adapter: BatchedAdapters)
- grouped: one sub-batch per adapter with switching (PEFT's `adapter_names` way, `--engine grouped`)
- merged:  one merged model per adapter, called in turn on its rows (what one would do without LoRA)

    python benchmarks/serve.py --threads 1                         # N = 1, 4, 16; ~5 min on 2 CPU cores
    python benchmarks/serve.py --adapters 1,16 --requests 200 --size tiny

Goals (issue 16): mixed >= 1.5 x grouped at 16 adapters, and mixed no slower than merged at 1 adapter.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS_DIR, command_line, markdown_table, set_threads, verdict, write_results

SENTENCES = ["The movie was a great and moving experience.", "A boring, terrible film with bad acting.",
             "The cat sat on the mat while the dog slept.", "It is colder today than yesterday.",
             "Two sentences can be paraphrases of each other.", "How many people live in the city?"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", default="1,4,16", help="comma list of adapter counts")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per (count, variant)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--size", choices=("small", "tiny"), default="small",
                        help="small: hidden 256, 4 layers; tiny: the test size (hidden 32, 2 layers)")
    parser.add_argument("--model", help="a real base checkpoint folder instead of the toy model")
    parser.add_argument("--variants", default="mixed,grouped,merged")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "serve.md")
    return parser.parse_args(argv)


def make_adapters(base: str, root: Path, count: int) -> dict[str, Path]:
    """`count` two-class adapters (ranks 4 and 8 alternating) with non-zero weights, as after training."""
    from roberta_lora.model.wrapper import LoraWrapperRoberta

    folders = {}
    for i in range(count):
        model = LoraWrapperRoberta(model_id=base, seed=i, lora_rank=4 if i % 2 else 8, task="sst2",
                                   label_names=["negative", "positive"])
        generator = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for tensor in model.adapter_state_dict().values():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
        folders[f"a{i:02d}"] = model.eval().save_adapter(root / f"a{i:02d}")
    return folders


def merged_engine(base: str) -> Any:
    """One merged standalone model per adapter (`merge_and_unload`), each called on its own rows."""
    from roberta_lora.model.wrapper import LoraWrapperRoberta
    from roberta_lora.serving.engine import Engine

    class MergedEngine(Engine):
        def __init__(self) -> None:
            super().__init__(base)
            self.models: dict[str, torch.nn.Module] = {}
            self.configs: dict[str, Any] = {}

        def add(self, name: str, directory: str | Path) -> Any:
            model = LoraWrapperRoberta.from_adapter(directory, model_id=base)
            self.models[name], self.configs[name] = model.merge_and_unload().eval(), model.adapter_config
            return model.adapter_config

        def remove(self, name: str) -> None:
            del self.models[name], self.configs[name]

        @property
        def names(self) -> list[str]:
            return list(self.models)

        def nbytes(self, name: str) -> int:
            return sum(p.nbytes for p in self.models[name].parameters())

        def forward(self, input_ids, attention_mask, adapters, token_type_ids):
            results: list[dict[str, Any]] = [{} for _ in adapters]
            for name in dict.fromkeys(adapters):
                rows = [i for i, a in enumerate(adapters) if a == name]
                index = torch.tensor(rows)
                out = self.models[name](input_ids=input_ids[index], attention_mask=attention_mask[index])
                for k, row in enumerate(rows):
                    results[row] = {"logits": out.logits[k]}
            return results

    return MergedEngine()


class RunningServer:
    """The real server (uvicorn) on a free loopback port, in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


async def load(url: str, names: list[str], requests: int, concurrency: int) -> tuple[float, list[float]]:
    """`requests` one-sentence requests, adapters round-robin, from `concurrency` clients: (seconds, latencies)."""
    import httpx

    queue = list(range(requests))
    latencies: list[float] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while queue:
                i = queue.pop()
                body = {"inputs": [{"adapter": names[i % len(names)], "text": SENTENCES[i % len(SENTENCES)]}]}
                started = time.perf_counter()
                response = await http.post("/predict", json=body)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def measure(variant: str, base: str, adapters: dict[str, Path], args: argparse.Namespace) -> dict[str, float]:
    from roberta_lora.serving.app import ServeConfig, create_app

    config = ServeConfig(model=base, adapters={n: str(d) for n, d in adapters.items()},
                         engine="grouped" if variant == "grouped" else "mixed", batch_window_ms=args.batch_window_ms)
    engine = merged_engine(base) if variant == "merged" else None
    with RunningServer(create_app(config, engine)) as running:
        url = f"http://127.0.0.1:{running.port}"
        asyncio.run(load(url, list(adapters), min(50, args.requests), args.concurrency))  # warm-up
        seconds, latencies = asyncio.run(load(url, list(adapters), args.requests, args.concurrency))
    return {"examples_per_s": args.requests / seconds, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99))}


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    set_threads(args.threads)
    from roberta_lora.model.toy import make_toy_roberta

    counts = [int(c) for c in args.adapters.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        shape = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024}
        base = args.model or str(make_toy_roberta(Path(scratch) / "base", **(shape if args.size == "small" else {})))
        folders = make_adapters(base, Path(scratch) / "adapters", max(counts))
        for count in counts:
            subset = dict(list(folders.items())[:count])
            for variant in variants:
                results[(count, variant)] = r = measure(variant, base, subset, args)
                rows.append([count, variant, f"{r['examples_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"])
                print(rows[-1], flush=True)
    summary = []
    if (max(counts), "mixed") in results and (max(counts), "grouped") in results:
        ratio = results[(max(counts), "mixed")]["examples_per_s"] / results[(max(counts), "grouped")]["examples_per_s"]
        summary.append(f"- {max(counts)} adapters: mixed / grouped = **{ratio:.2f}** x examples/s, "
                       f"{verdict(ratio, 1.5, below=False)}")
    if (1, "mixed") in results and (1, "merged") in results:
        ratio = results[(1, "mixed")]["examples_per_s"] / results[(1, "merged")]["examples_per_s"]
        summary.append(f"- 1 adapter: mixed / merged = **{ratio:.2f}** x examples/s, "
                       f"{verdict(ratio, 1.0, below=False)}: no slower")
    body = "\n\n".join([
        f"{'a real checkpoint' if args.model else f'a toy RoBERTa ({args.size})'}; {args.requests} timed requests "
        f"of one sentence each (after a warm-up) from {args.concurrency} concurrent httpx clients, adapters "
        f"round-robin; batch window {args.batch_window_ms:g} ms; torch threads {torch.get_num_threads()}. "
        "Client and server share one process, so examples/s compare the variants, not absolute capacity.",
        markdown_table(["adapters", "variant", "examples/s", "p50 ms", "p99 ms"], rows), "\n".join(summary)])
    return write_results(args.output, "Serving many adapters", command_line("benchmarks/serve.py", argv), "cpu", body)


if __name__ == "__main__":
    print(main())

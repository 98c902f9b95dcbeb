"""Serving many adapters on one base: the mixed-adapter forward, and `roberta-lora serve` under load.

Two parts (`--part`), each writing its own section of results/serve.md (the other sections are kept):

forward: one forward pass over rows of different adapters, at roberta-base dimensions by default
(`serve_forward.py`): ours (`BatchedAdapters`) against PEFT's own mixed-adapter inference
(`PeftModel(..., adapter_names=[...])`) and the frozen base alone (the limit), at 16 adapters / 32 rows and
64 / 64; then what one loaded but unused adapter of a large rank costs the others.

server: a stream of small requests (one sentence each) spread over N adapters, all through the same HTTP
server, batcher and tokenization, so only the forward differs:

- mixed:   `roberta-lora serve` (one forward pass per batch, each row with its own adapter: BatchedAdapters)
- grouped: one sub-batch per adapter with switching (PEFT's `adapter_names` way, `--engine grouped`)
- merged:  one merged model per adapter, called in turn on its rows (what one would do without LoRA)
- base:    every row through ONE plain model (the first adapter merged): the frozen base alone, the limit
           (its answers are only right for the first adapter; it is there for the cost)

    python benchmarks/serve.py --part forward --threads 2           # roberta-base dims; ~15 min on 2 CPU cores
    python benchmarks/serve.py --part server --size base --threads 2
    python benchmarks/serve.py --part server --size small --threads 1   # N = 1, 4, 16; ~5 min
    python benchmarks/serve.py --part server --size tiny --adapters 1,2 --requests 24

Goals: forward, ours >= 0.95 x the base alone's throughput and faster than PEFT; an unused large-rank adapter
costs < 10%. Server (issue 16): mixed >= 1.5 x grouped at 16 adapters, and no slower than merged at 1.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    RESULTS_DIR,
    command_line,
    load_average,
    machine_description,
    markdown_table,
    set_threads,
    verdict,
)

SIZES = {"base": "roberta-base dimensions (hidden 768, 12 layers, 12 heads, FFN 3072), random weights",
         "small": "a toy RoBERTa (small: hidden 256, 4 layers, 4 heads, FFN 1024), random weights",
         "tiny": "a toy RoBERTa (tiny, the test size: hidden 32, 2 layers), random weights"}
SECTION_ORDER = [f"{part}-{size}" for size in SIZES for part in ("forward", "server")]
GOAL_VS_BASE = 0.95  # ours' throughput / the base alone's
GOAL_UNUSED_RANK = 0.90  # throughput with an unused large-rank adapter loaded / without

SENTENCES = ["The movie was a great and moving experience.", "A boring, terrible film with bad acting.",
             "The cat sat on the mat while the dog slept.", "It is colder today than yesterday.",
             "Two sentences can be paraphrases of each other.", "How many people live in the city?"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("forward", "server", "all"), default="all",
                        help="forward: the forward-only comparison; server: end to end through the HTTP server")
    parser.add_argument("--size", choices=tuple(SIZES), default="base",
                        help="base: roberta-base dimensions; small: hidden 256, 4 layers; tiny: hidden 32, 2 layers")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "serve.md")
    forward = parser.add_argument_group("forward part")
    forward.add_argument("--cases", default="16x32,64x64", help="comma list of ADAPTERSxROWS")
    forward.add_argument("--ranks", default="8,4", help="adapter i has rank ranks[i mod len(ranks)]")
    forward.add_argument("--tokens", type=int, default=24, help="tokens per row")
    forward.add_argument("--unused", default="16x32:8:64",
                         help="ADAPTERSxROWS:RANK:LARGE: ADAPTERS of RANK vs one of them replaced by an unused LARGE")
    forward.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    forward.add_argument("--repeats", type=int, default=10, help="timed rounds (every variant once per round)")
    server = parser.add_argument_group("server part")
    server.add_argument("--adapters", default="1,4,16", help="comma list of adapter counts")
    server.add_argument("--requests", type=int, default=400, help="timed requests per (count, variant)")
    server.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    server.add_argument("--model", help="a real base checkpoint folder instead of the toy model")
    server.add_argument("--variants", default="mixed,grouped,merged,base")
    server.add_argument("--batch-window-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        args.cases = [_pair(case) for case in args.cases.split(",") if case]
        args.ranks = [int(r) for r in args.ranks.split(",") if r]
        shape, rank, large = args.unused.split(":")
        args.unused = (*_pair(shape), int(rank), int(large))
    except ValueError as error:
        parser.error(f"--cases / --ranks / --unused: {error} (e.g. --cases 16x32,64x64 --ranks 8,4 --unused 16x32:8:64)")
    return args


def _pair(text: str) -> tuple[int, int]:
    adapters, rows = text.lower().split("x")
    return int(adapters), int(rows)


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


def merged_engine(base: str, first_only: bool = False) -> Any:
    """One merged standalone model per adapter (`merge_and_unload`), each called on its own rows; with
    `first_only`, the first adapter's merged model answers every row (the cost of the base alone)."""
    from roberta_lora.model.wrapper import LoraWrapperRoberta
    from roberta_lora.serving.engine import Engine

    class MergedEngine(Engine):
        def __init__(self) -> None:
            super().__init__(base)
            self.models: dict[str, torch.nn.Module] = {}
            self.configs: dict[str, Any] = {}

        def add(self, name: str, directory: str | Path) -> Any:
            if first_only and self.models:
                from roberta_lora.model.config import read_adapter_config

                self.models[name], self.configs[name] = next(iter(self.models.values())), read_adapter_config(directory)[0]
                return self.configs[name]
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
            if first_only:
                logits = next(iter(self.models.values()))(input_ids=input_ids, attention_mask=attention_mask).logits
                return [{"logits": row} for row in logits]
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
    engine = merged_engine(base, first_only=variant == "base") if variant in ("merged", "base") else None
    with RunningServer(create_app(config, engine)) as running:
        url = f"http://127.0.0.1:{running.port}"
        asyncio.run(load(url, list(adapters), min(50, args.requests), args.concurrency))  # warm-up
        seconds, latencies = asyncio.run(load(url, list(adapters), args.requests, args.concurrency))
    return {"examples_per_s": args.requests / seconds, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99))}


def server_part(args: argparse.Namespace) -> str:
    """Every (adapter count, variant) through the real server; the section's body."""
    from roberta_lora.model.toy import make_toy_roberta

    counts = [int(c) for c in args.adapters.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    results = {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        shape = {"base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072},
                 "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024},
                 "tiny": {}}[args.size]
        base = args.model or str(make_toy_roberta(Path(scratch) / "base", **shape))
        folders = make_adapters(base, Path(scratch) / "adapters", max(counts))
        for count in counts:
            subset = dict(list(folders.items())[:count])
            for variant in variants:
                results[(count, variant)] = measure(variant, base, subset, args)
                print(f"[server] {count} adapters, {variant}: {results[(count, variant)]}", flush=True)
    return server_report(results, args)


def server_report(results: dict[tuple[int, str], dict[str, float]], args: argparse.Namespace) -> str:
    rows = [[count, variant, f"{r['examples_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]
            for (count, variant), r in results.items()]
    speed = {key: r["examples_per_s"] for key, r in results.items()}
    top = max(count for count, _ in results)
    summary = []
    if (top, "mixed") in speed and (top, "grouped") in speed:
        ratio = speed[(top, "mixed")] / speed[(top, "grouped")]
        summary.append(f"- {top} adapters: mixed / grouped = **{ratio:.2f}** x examples/s, "
                       f"{verdict(ratio, 1.5, below=False)}")
    if (1, "mixed") in speed and (1, "merged") in speed:
        ratio = speed[(1, "mixed")] / speed[(1, "merged")]
        summary.append(f"- 1 adapter: mixed / merged = **{ratio:.2f}** x examples/s, "
                       f"{verdict(ratio, 1.0, below=False)}: no slower")
    for count in sorted({count for count, _ in results}):
        if (count, "mixed") in speed and (count, "base") in speed:
            ratio = speed[(count, "mixed")] / speed[(count, "base")]
            summary.append(f"- {count} adapters: mixed / base alone = **{ratio:.2f}** x examples/s")
    model = "a real checkpoint" if args.model else SIZES[args.size]
    return "\n\n".join([
        f"{model}; {args.requests} timed requests of one sentence each (after a warm-up) from {args.concurrency} "
        f"concurrent httpx clients, adapters round-robin (ranks 8 and 4 alternating); batch window "
        f"{args.batch_window_ms:g} ms; torch threads {torch.get_num_threads()}. Client and server share one "
        "process, so examples/s compare the variants, not absolute capacity. base = every row through one "
        "plain model (the limit; only the first adapter's answers are right).",
        markdown_table(["adapters", "variant", "examples/s", "p50 ms", "p99 ms"], rows), "\n".join(summary)])


def forward_part(args: argparse.Namespace) -> str:
    """The forward-only comparison (`serve_forward.py`); the section's body."""
    from serve_forward import mixed_forward, unused_large_rank

    records = mixed_forward(args.size, args.cases, args.ranks, args.tokens, args.warmup, args.repeats)
    count, rows, rank, large = args.unused
    unused = unused_large_rank(args.size, count, rows, rank, large, args.tokens, args.warmup, args.repeats)
    return forward_report(records, unused, args)


def forward_report(records: list[dict[str, Any]], unused: dict[str, Any], args: argparse.Namespace) -> str:
    # One torch thread: CPU time is the work and the clock to compare on a shared machine; several: wall time.
    cpu = torch.get_num_threads() == 1
    clock = "CPU" if cpu else "wall"
    records = [_on_clock(r, cpu) for r in records]
    unused = _on_clock(unused, cpu)
    rows, summary = [], []
    for r in records:
        vs_base, vs_peft = r["base"] / r["ours"], r["peft"] / r["ours"]
        rows.append([f"{r['adapters']} / {r['rows']}", _ms(r["ours"]), _ms(r["peft"]), _ms(r["base"]),
                     f"{vs_base:.3f}", f"{vs_peft:.3f}"])
        summary.append(f"- {r['adapters']} adapters / {r['rows']} rows: ours' throughput / the base alone's = "
                       f"**{vs_base:.3f}**, {verdict(vs_base, GOAL_VS_BASE, below=False)}; PEFT's time / ours = "
                       f"**{vs_peft:.3f}**, {verdict(vs_peft, 1.0, below=False)}"
                       + ("" if cpu else _best(r, "base", "peft")))
    ratio = unused["same"] / unused["mixed"]
    mb = 1024 * 1024
    unused_rows = [
        [f"{unused['adapters']} x r={unused['rank']}", _ms(unused["same"]), "1.000", f"{unused['held_same'] / mb:.2f}"],
        [f"{unused['adapters'] - 1} x r={unused['rank']} + 1 x r={unused['large']} (unused)", _ms(unused["mixed"]),
         f"{ratio:.3f}", f"{unused['held_mixed'] / mb:.2f}"]]
    summary.append(f"- {unused['adapters'] - 1} r={unused['rank']} adapters plus one unused r={unused['large']}: "
                   f"throughput / all r={unused['rank']} = **{ratio:.3f}**, "
                   f"{verdict(ratio, GOAL_UNUSED_RANK, below=False)}"
                   + (f" (fastest rounds: {unused['same_best'] / unused['mixed_best']:.3f})"
                      if "same_best" in unused and not cpu else ""))
    ranks = "/".join(str(r) for r in args.ranks)
    settings = (
        f"{SIZES[args.size]}; rows of {args.tokens} tokens (full mask), row i asks for adapter i mod N; LoRA "
        f"r={ranks} alternating, alpha 16, on query and value, random non-zero A and B, no bias or LayerNorm "
        f"training; torch threads {torch.get_num_threads()}; {args.warmup} warm-up + {args.repeats} timed round(s), "
        f"variants interleaved; median {clock}-clock ms per forward (base / ours = ours' throughput as a fraction of "
        "the base alone's; PEFT / ours > 1: ours is faster). ours = `BatchedAdapters.forward` "
        "(with each adapter's 2-class head); PEFT = `PeftModel(RobertaModel)` called with `adapter_names` per "
        "row (encoder only); base alone = the plain `RobertaModel`. Before timing, rows of one adapter per rank "
        "were checked: ours and PEFT (under that adapter's head) equal the adapter alone within 1e-4.")
    unused_note = (f"An unused large rank: {unused['rows']} rows over {unused['adapters'] - 1} r={unused['rank']} "
                   f"adapters, with one more r={unused['rank']} adapter loaded, or one r={unused['large']} adapter "
                   "loaded instead; no row asks for it. Held = `held_bytes()`.")
    return "\n\n".join([
        settings,
        markdown_table(["adapters / rows", f"ours ms ({clock})", f"PEFT ms ({clock})", f"base alone ms ({clock})",
                        "base / ours", "PEFT / ours"], rows),
        unused_note,
        markdown_table(["adapters loaded", f"ms per forward ({clock})", "throughput vs all r=" + str(unused["rank"]),
                        "held MB"],
                       unused_rows),
        "\n".join(summary)])


def _ms(value: float) -> str:
    """A time in ms for the tables: one decimal from 10 ms up, two below, so that the ratios printed beside
    the times can be recomputed from them (at tiny sizes a forward takes 1-2 ms)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _on_clock(record: dict[str, Any], cpu: bool) -> dict[str, Any]:
    """`record` with each variant's median on the CPU clock when `cpu` (NAME_cpu -> NAME), as recorded otherwise."""
    if not cpu:
        return record
    return record | {key.removesuffix("_cpu"): value for key, value in record.items() if key.endswith("_cpu")}


def _best(record: dict[str, Any], *others: str) -> str:
    """" (fastest rounds: X / ours = ...)": the same ratios from each variant's fastest round, when recorded."""
    if "ours_best" not in record:
        return ""
    ratios = ", ".join(f"{other} / ours = {record[other + '_best'] / record['ours_best']:.3f}" for other in others)
    return f" (fastest rounds: {ratios})"


# ----------------------------------------------------------------------------- the results file
SECTION = re.compile(r"^<!-- section: (\S+) -->$", re.MULTILINE)
INTRO = ("# Serving many adapters\n\nEach section is written by one run of `benchmarks/serve.py --part PART "
         "--size SIZE` and replaced only by the next such run. Figures on a shared machine are noisy; compare "
         "the ratios, which were measured side by side in the same run.\n\n")


def _section_rank(key: str) -> tuple[int, int]:
    """"forward-base-2t" -> (its part and size in SECTION_ORDER, more threads first)."""
    prefix, _, threads = key.rpartition("-")
    order = SECTION_ORDER.index(prefix) if prefix in SECTION_ORDER else len(SECTION_ORDER)
    return order, -int(threads.removesuffix("t")) if threads.removesuffix("t").isdigit() else 0


def write_section(path: Path, key: str, title: str, command: str, body: str) -> Path:
    """Write `body` as section `key` ("PART-SIZE-Nt", N torch threads) of the results file, keeping its other
    sections (ordered as SECTION_ORDER, then more threads first)."""
    path = Path(path)
    sections: dict[str, str] = {}
    if path.exists():
        pieces = SECTION.split(path.read_text(encoding="utf-8"))  # [intro, key, text, key, text, ...]
        sections = dict(zip(pieces[1::2], pieces[2::2], strict=True))
    sections[key] = (
        f"\n## {title}\n\nCommand: `{command}`\n\nMachine: {machine_description('cpu')}\n\n"
        f"Load average (1/5/15 min) at the end: {load_average()}. Written {time.strftime('%Y-%m-%d %H:%M:%S')}.\n\n"
        f"{body.rstrip()}\n\n")
    ordered = sorted(sections, key=_section_rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = INTRO + "".join(f"<!-- section: {k} -->{sections[k]}" for k in ordered)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    set_threads(args.threads)
    command = command_line("serve.py", argv)
    parts = ("forward", "server") if args.part == "all" else (args.part,)
    threads = torch.get_num_threads()
    for part in parts:
        key = f"{part}-{args.size}-{threads}t"
        if part == "forward":
            title = f"Forward only: one mixed-adapter pass, ours vs PEFT vs the base alone ({args.size}, {threads} threads)"
            write_section(args.output, key, title, command, forward_part(args))
        else:
            title = f"End to end through the server ({args.size}, {threads} thread{'s' if threads > 1 else ''})"
            write_section(args.output, key, title, command, server_part(args))
    return args.output


if __name__ == "__main__":
    print(main())

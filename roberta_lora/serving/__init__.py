"""Serving: one process, one frozen base, every adapter's task answered over HTTP.

`engine` runs one forward pass over examples that name different adapters (`GroupedEngine` through an
`AdapterBank`, `MixedEngine` through `adapters.batched.BatchedAdapters`); `pool` keeps the adapters in
memory within a budget (LRU, reloaded on demand); `batcher` gathers requests into batches on the event
loop and runs them on one worker thread; `app` is the FastAPI application. Nothing here is imported by
the package face: fastapi, uvicorn and torch load only when `roberta-lora serve` runs.
"""

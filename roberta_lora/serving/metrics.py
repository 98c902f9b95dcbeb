"""The server's Prometheus metrics, on a registry of its own (two apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 65536)
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """Counters and histograms of requests, examples, batches and errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("serve_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.examples = Counter("serve_examples", "examples answered, by adapter", ["adapter"], registry=r)
        self.errors = Counter("serve_errors", "requests that failed, by kind", ["kind"], registry=r)
        self.batch_size = Histogram("serve_batch_size", "examples per forward pass", buckets=SIZE_BUCKETS,
                                    registry=r)
        self.batch_tokens = Histogram("serve_batch_tokens", "padded tokens per forward pass",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.queue_seconds = Histogram("serve_queue_seconds", "time an example waited for its batch",
                                       buckets=TIME_BUCKETS, registry=r)
        self.batch_seconds = Histogram("serve_batch_seconds", "time of one batch on the worker (load + forward)",
                                       buckets=TIME_BUCKETS, registry=r)
        self.latency = Histogram("serve_request_seconds", "request latency", ["endpoint"], buckets=TIME_BUCKETS,
                                 registry=r)
        self.adapters_loaded = Gauge("serve_adapters_loaded", "adapters in memory now", registry=r)
        self.adapter_loads = Counter("serve_adapter_loads", "adapters loaded into memory", registry=r)
        self.adapter_evictions = Counter("serve_adapter_evictions", "adapters dropped from memory (LRU)",
                                         registry=r)

    def render(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)

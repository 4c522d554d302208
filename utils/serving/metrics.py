"""Prometheus metrics of the server and its engine, in a registry of their own (one per server).

- `serving_requests_total{outcome}`: requests by outcome (`ok`, `bad_request`, `overloaded`, `unavailable`,
  `error`);
- `serving_request_seconds`: latency of answered requests, as the HTTP layer sees it;
- `serving_image_seconds`: time from admission to answer of each image, inside the engine;
- `serving_exit_layer`: the layer each image left at (bucket `le="L"` counts images that left by layer L);
- `serving_queue_depth{stage}`: images waiting at each stage, read at every scrape;
- `serving_batch_size{stage}` and `serving_batch_seconds{stage}`: size and run time of every batch per stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .engine import Prediction

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("ok", "bad_request", "overloaded", "unavailable", "error")


def batch_buckets(max_batch: int) -> list[float]:
    """Powers of two up to `max_batch`, and `max_batch` itself."""
    buckets = sorted({2 ** k for k in range(max_batch.bit_length()) if 2 ** k < max_batch} | {max_batch})
    return [float(value) for value in buckets]


class ServingMetrics:
    """The metrics of one server; also the engine's observer (`batch`, `answered`).

    Args:
        exit_layers: every layer an image can leave at (the exits' and the full depth).
        num_stages: stages of the engine.
        max_batch: the engine's largest batch (the batch-size buckets).
    Queue depths are read from the engine at every scrape once `watch_queues` is given its `queue_depths`.
    """

    def __init__(self, exit_layers: Sequence[int], num_stages: int, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter("serving_requests", "Requests by outcome.", ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.request_seconds = Histogram("serving_request_seconds", "Latency of answered requests (HTTP layer).",
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.image_seconds = Histogram("serving_image_seconds", "Time from admission to answer of each image.",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.exit_layer = Histogram("serving_exit_layer", "Layer each image left at.",
                                    buckets=[float(layer) for layer in sorted(set(exit_layers))],
                                    registry=self.registry)
        self.queue_depth = Gauge("serving_queue_depth", "Images waiting at each stage.", ["stage"],
                                 registry=self.registry)
        self.num_stages = num_stages
        self.batch_size = Histogram("serving_batch_size", "Rows of each batch, per stage.", ["stage"],
                                    buckets=batch_buckets(max_batch), registry=self.registry)
        self.batch_seconds = Histogram("serving_batch_seconds", "Run time of each batch, per stage.", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)

    def watch_queues(self, queue_depths: Callable[[], list[int]]) -> None:
        """Read the queue depths from `queue_depths` (e.g. `ExitEngine.queue_depths`) at every scrape."""
        for stage in range(self.num_stages):
            self.queue_depth.labels(str(stage)).set_function(lambda stage=stage: queue_depths()[stage])

    def batch(self, stage: int, rows: int, seconds: float) -> None:
        self.batch_size.labels(str(stage)).observe(rows)
        self.batch_seconds.labels(str(stage)).observe(seconds)

    def answered(self, prediction: Prediction) -> None:
        self.image_seconds.observe(prediction.seconds)
        self.exit_layer.observe(prediction.exit_layer)

"""Wall-clock timing of early exit against the full model: interleaved repetitions, medians, ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def full_model_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The backbone with its final classifier only (every block, no exit head): what the plain classifier
    computes, through the same adapter methods the early-exit runner uses."""
    hidden = model.embed(pixel_values)
    for index in range(model.config.num_blocks):
        hidden = model.run_layer(index, hidden)[1]
    return model.final_logits(hidden)


def median_times(ways: dict[str, Callable[[], object]], repeats: int,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of each way over `repeats` rounds, after one warm-up call each; the order of the ways
    rotates every round, so a slow spell of a busy machine hits them alike.

    `clock` reads the time (seconds by default); any other monotonic counter, e.g. of work done, measures in its
    own unit."""
    names, runs = list(ways), {name: [] for name in ways}
    for name in names:
        ways[name]()
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            ways[name]()
            runs[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in runs.items()}


def measure_speedup(model: nn.Module, images: torch.Tensor, batch_size: int, repeats: int = 5,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Time `images` through the full model and through the model's own early exit (its current thresholds).

    Returns images/s of both and `measured_speedup` = full-model time / early-exit time (medians). `clock` as in
    `median_times` (wall-clock seconds by default).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = images.to(device).split(batch_size)

    def synchronised(function: Callable[[torch.Tensor], object]) -> Callable[[], None]:
        def run() -> None:
            for batch in batches:
                function(batch)
            if device.type != "cpu":
                torch.accelerator.synchronize()
        return run

    try:
        with torch.inference_mode():
            times = median_times({"full_model": synchronised(lambda batch: full_model_logits(model, batch)),
                                  "early_exit": synchronised(lambda batch: model(batch, early_exit=True))}, repeats,
                                 clock)
    finally:
        model.train(was_training)
    return {
        "full_model_images_per_second": len(images) / times["full_model"],
        "early_exit_images_per_second": len(images) / times["early_exit"],
        "measured_speedup": times["full_model"] / times["early_exit"],
        "timed_images": len(images),
        "timing_batch_size": batch_size,
    }

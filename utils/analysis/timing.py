"""Wall-clock timing of early exit against the full model: which images stand for a split, interleaved repetitions,
medians, ratios and their spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def timing_sample(num_rows: int, count: int, seed: int) -> list[int]:
    """`count` row indices (all rows when there are fewer) drawn at random without replacement with `seed`: a split
    stored class by class would otherwise be timed on its first classes alone, whose exits need not be the split's."""
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return order[:count].tolist()


def full_model_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The backbone with its final classifier only (every block, no exit head): what the plain classifier
    computes, through the same adapter methods the early-exit runner uses."""
    hidden = model.embed(pixel_values)
    for index in range(model.config.num_blocks):
        hidden = model.run_layer(index, hidden)[1]
    return model.final_logits(hidden)


def round_times(ways: dict[str, Callable[[], object]], repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each way in each of `repeats` rounds, after one warm-up call each; the order of the ways rotates
    every round, so a slow spell of a busy machine hits them alike.

    `clock` reads the time (seconds by default); any other monotonic counter, e.g. of work done, measures in its
    own unit."""
    return stepwise_round_times({name: [way] for name, way in ways.items()}, repeats, clock)


def stepwise_round_times(ways: dict[str, Sequence[Callable[[], object]]], repeats: int,
                         clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """`round_times` for ways made of steps (e.g. one call per batch; every way has as many): a round runs step i
    of every way, in an order that rotates with i and with the round, before step i + 1, and a way's round time is
    the sum of its steps. A slow spell shorter than a round then still falls on every way alike."""
    names, runs = list(ways), {name: [] for name in ways}
    for name in names:
        for step in ways[name]:
            step()
    for round_index in range(repeats):
        totals = dict.fromkeys(names, 0.0)
        for step_index in range(len(ways[names[0]])):
            shift = (round_index + step_index) % len(names)
            for name in names[shift:] + names[:shift]:
                start = clock()
                ways[name][step_index]()
                totals[name] += clock() - start
        for name in names:
            runs[name].append(totals[name])
    return runs


def median_times(ways: dict[str, Callable[[], object]], repeats: int,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median time of each way over `round_times`' rounds."""
    return {name: statistics.median(values) for name, values in round_times(ways, repeats, clock).items()}


def measure_speedup(model: nn.Module, images: torch.Tensor, batch_size: int, repeats: int = 11,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time `images` through the full model and through the model's own early exit (its current thresholds).

    Each round times both, back to back; `measured_speedup` is the median over rounds of full-model time /
    early-exit time, and `measured_speedup_range` the smallest and largest round's ratio (how much it moved).
    Also images/s of both (medians). `clock` as in `round_times` (wall-clock seconds by default).
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
            times = round_times({"full_model": synchronised(lambda batch: full_model_logits(model, batch)),
                                 "early_exit": synchronised(lambda batch: model(batch, early_exit=True))}, repeats,
                                clock)
    finally:
        model.train(was_training)
    ratios = [full / early for full, early in zip(times["full_model"], times["early_exit"])]
    return {
        "full_model_images_per_second": len(images) / statistics.median(times["full_model"]),
        "early_exit_images_per_second": len(images) / statistics.median(times["early_exit"]),
        "measured_speedup": statistics.median(ratios),
        "measured_speedup_range": [min(ratios), max(ratios)],
        "timed_images": len(images),
        "timed_rounds": repeats,
        "timing_batch_size": batch_size,
    }

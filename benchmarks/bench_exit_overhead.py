"""Bookkeeping overhead of batched per-sample early exit.

A tiny 12-layer DeiT with the 8 LGViT exits (hidden 128, patch 4, 32x32 images, random weights) runs the same
images three ways, interleaved, and the median times are compared:
- `early exit`: the model's own per-sample early exit (criterion, masks, shrinking batch);
- `oracle`: the same blocks and heads for exactly the rows that use them, with the exit layers known in advance
  and the batch sorted so that the running rows are always a prefix (no decisions, no copies);
- `plain`: at batch 1, only the backbone blocks up to the sample's exit layer (no heads).
Targets: early exit / oracle <= 1.10 at batch 64 and <= 1.15 at batch 1.

    python -m benchmarks.bench_exit_overhead [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models import DeiTHighwayConfig, DeiTHighwayForImageClassification


def build_model() -> DeiTHighwayForImageClassification:
    torch.manual_seed(0)
    config = DeiTHighwayConfig(hidden_size=128, num_hidden_layers=12, num_attention_heads=4, intermediate_size=512,
                               image_size=32, patch_size=4, num_labels=10, backbone="DeiT", highway_type="LGViT",
                               num_early_exits=8, exit_strategy="confidence")
    return DeiTHighwayForImageClassification(config).eval()


def spread_thresholds(model: DeiTHighwayForImageClassification, images: torch.Tensor) -> None:
    """Pick per-exit confidence thresholds so that the samples leave spread over every exit and the end."""
    with torch.inference_mode():
        outputs = model(images, early_exit=False)
    confidences = torch.stack([logits.softmax(-1).max(-1).values for logits in outputs.exit_logits])
    num_exits = len(outputs.exit_logits)
    model.config.threshold = [confidences[k].quantile(1 - 1 / (num_exits + 1 - k)).item() for k in range(num_exits)]


def oracle(model: DeiTHighwayForImageClassification, images: torch.Tensor, exit_layer: torch.Tensor) -> None:
    """Blocks and heads for exactly the rows that use them; rows sorted by exit layer, running rows a prefix."""
    order = exit_layer.argsort(descending=True)
    images, exit_layer = images[order], exit_layer[order]
    hidden = model.embed(images)
    exit_after = model.exit_after_layer()
    running = [(exit_layer > index).sum().item() for index in range(model.config.num_blocks)]
    for index in range(model.config.num_blocks):
        hidden = model.run_layer(index, hidden)[1]
        if index in exit_after:
            model.exits[exit_after[index]](hidden)
            hidden = hidden[: running[index]]
        if hidden.shape[0] == 0:
            return
    model.final_logits(hidden)


def plain_depth(model: DeiTHighwayForImageClassification, images: torch.Tensor, depth: int) -> None:
    """Backbone blocks only, up to `depth`."""
    hidden = model.embed(images)
    for index in range(depth):
        hidden = model.run_layer(index, hidden)[1]


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def compare(model, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of each way over `repeats` rounds; the order of the ways rotates every round."""
    with torch.inference_mode():
        exit_layer = model(images).exit_layer
    ways = {"early exit": lambda: model(images), "oracle": lambda: oracle(model, images, exit_layer)}
    if images.shape[0] == 1:
        ways["plain"] = lambda: plain_depth(model, images, int(exit_layer[0]))
    runs = {name: [] for name in ways}
    names = list(ways)
    with torch.inference_mode():
        for round_index in range(repeats):
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                runs[name].append(timed(ways[name]))
    return {name: statistics.median(values) for name, values in runs.items()}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this module."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    model = build_model()
    images = torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    spread_thresholds(model, images)
    with torch.inference_mode():
        layers = model(images).exit_layer
    print(f"exit layers of 256 images: {torch.bincount(layers, minlength=13)[1:].tolist()} (layers 1..12), "
          f"average {layers.float().mean():.2f}")
    for batch_size in (64, 1):
        ratios, times = [], []
        # At batch 1 time several single images, since each leaves at its own layer.
        batches = [images[:64]] if batch_size == 64 else [images[i:i + 1] for i in range(0, 64, 4)]
        for batch in batches:
            timing = compare(model, batch, args.repeats)
            times.append(timing)
            ratios.append(timing["early exit"] / timing["oracle"])
        early, best = sum(t["early exit"] for t in times), sum(t["oracle"] for t in times)
        line = (f"batch {batch_size:>2}: early exit {early * 1e3:.2f} ms, oracle {best * 1e3:.2f} ms, "
                f"early exit / oracle = {early / best:.3f}")
        if batch_size == 1:
            line += f", early exit / plain blocks to the same depth = {early / sum(t['plain'] for t in times):.3f}"
        print(line)


if __name__ == "__main__":
    main()

"""Cost of an evaluation batch with each exit's accuracy, from one model call against two.

The model of `bench_exit_overhead` (12-layer DeiT, hidden 128, 8 LGViT exits, random weights, 32x32 images) with
thresholds that spread the images over every exit. Three ways, interleaved (`utils.analysis.timing.round_times`):
- `early exit`: the per-sample early exit alone (`--every_exit_accuracy False`);
- `one pass`: every exit computed, the early exit decided from those logits (what `ExitTrainer.prediction_step`
  does with `every_exit_accuracy`);
- `two passes`: the early exit, then every exit (how each exit's accuracy was computed before).
Prints the median seconds per evaluation and the ratios to `early exit`.

    python -m benchmarks.bench_evaluation [--images 256] [--batch 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.bench_exit_overhead import build_model, spread_thresholds
from models.exiting import decide_from_logits
from utils.analysis.timing import round_times


def one_pass(model, batch: torch.Tensor) -> None:
    config = model.config
    every_exit = model(batch, early_exit=False)
    decide_from_logits(config.exit_settings(), every_exit.exit_logits, every_exit.final_logits,
                       config.exit_positions(), config.num_blocks)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    model = build_model()
    images = torch.randn(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    spread_thresholds(model, images)
    batches = images.split(args.batch)

    def evaluation(*steps):
        def run() -> None:
            for batch in batches:
                for step in steps:
                    step(batch)
        return run

    early = model.__call__
    with torch.inference_mode():
        average_layer = model(images).exit_layer.double().mean().item()
        times = round_times({"early exit": evaluation(early), "one pass": evaluation(lambda b: one_pass(model, b)),
                             "two passes": evaluation(early, lambda b: model(b, early_exit=False))}, args.repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.images} images in batches of {args.batch}, average exit layer {average_layer:.2f} of 12, "
          f"{args.repeats} rounds")
    for name, seconds in medians.items():
        print(f"{name:>11}: {seconds:.3f} s  ({seconds / medians['early exit']:.2f}x early exit)")


if __name__ == "__main__":
    main()

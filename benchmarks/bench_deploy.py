"""Serving speed of early exit in three engines: eager PyTorch, compiled PyTorch (`compile_exits`) and onnxruntime
(`utils.export`), against the full model in the same engine.

The model is the benchmark model of `bench_measured_speedup` (12-layer DeiT, hidden 128, 32x32 images, the 8 LGViT
exits on layers 4..11, trained a few epochs on the digits; or --checkpoint). Its thresholds are calibrated on
held-out training digits for each budget, then the test images run through every way below in steps of 64 images:
each step goes through all of them (in an order that rotates) before the next, so each way runs warm, as when it
serves alone, and a slow spell of the machine falls on all alike:
- `eager`: the model's early exit / the backbone with its final classifier only (`full_model_logits`);
- `compiled`: the same with every segment compiled by torch.compile (inductor) / the full model compiled;
- `onnxruntime`: `EarlyExitSession` (the segments and decisions as one graph) / the exported plain classifier
  (`full_model.onnx`).
Printed per engine and batch size: images/s of early exit and of the full model (medians over rounds), measured
speed-up (full time / early-exit time: the median over rounds, and its smallest and largest round) and measured /
FLOPs speed-up. Two uncalibrated settings follow: one spreads the images over every exit (the hardest case: every
exit head and decision costs latency); in the other no exit fires, which shows what the heads and decisions cost
beyond their FLOPs.
Targets: the fastest engine keeps >= 0.9 of the FLOPs speed-up at batch 1 and >= 0.95 at batch 64 at the calibrated
thresholds and beats eager early exit; >= 0.85 at batch 1 in the spread setting.

    python -m benchmarks.bench_deploy [--checkpoint DIR] [--train_epochs 6] [--repeats 7] [--threads 1]
        [--exporter torchscript]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.bench_measured_speedup import benchmark_model, calibrate_and_report, digits_splits, spread_settings
from models import DeiTHighwayForImageClassification
from models.exit_settings import ExitSettings
from models.segments import Segment, SegmentModule
from utils.analysis.calibration import write_exit_settings
from utils.analysis.flops import FlopsProfile, profile_flops
from utils.analysis.timing import full_model_logits, stepwise_round_times
from utils.export import EarlyExitSession, export_onnx

BATCH_SIZES = (64, 1)
# Images each way runs before the next way takes over: enough that a way runs warm, as when it serves alone, and few
# enough that a slow spell of the machine falls on every way alike.
IMAGES_PER_STEP = 64


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a saved model directory to load instead of training")
    parser.add_argument("--train_epochs", type=int, default=6)
    parser.add_argument("--images", type=int, default=192, help="test images timed (a multiple of 64)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"))
    return parser


class Engines:
    """The early-exit and full-model calls of every engine, on batches of torch tensors."""

    def __init__(self, model: DeiTHighwayForImageClassification, export_dir: str, exporter: str, threads: int):
        self.model = model
        full = SegmentModule(model, Segment(0, model.config.num_blocks, None)).eval()
        self.compiled_full = torch.compile(full, dynamic=True, fullgraph=True)
        self.compiled_model = DeiTHighwayForImageClassification(model.config).eval()
        self.compiled_model.load_state_dict(model.state_dict())
        self.compiled_model.compile_exits()
        export_onnx(model, export_dir, exporter=exporter, full_model=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.session = EarlyExitSession(export_dir, providers=["CPUExecutionProvider"], options=options)
        self.full_session = ort.InferenceSession(f"{export_dir}/full_model.onnx", sess_options=options,
                                                 providers=["CPUExecutionProvider"])

    def sync_settings(self) -> None:
        """Give the compiled model and the onnxruntime session the eager model's current exit setting."""
        settings = self.model.config.exit_settings()
        for target in (self.compiled_model.config, self.session):
            target.exit_strategy, target.threshold, target.patience = (settings.strategy, list(settings.thresholds),
                                                                       settings.patience)

    def ways(self, batches: list[torch.Tensor]) -> dict[str, dict[str, list[Callable[[], object]]]]:
        """Per engine, the early-exit and full-model calls in steps of IMAGES_PER_STEP images."""
        per_step = max(1, IMAGES_PER_STEP // len(batches[0]))
        steps = [batches[start:start + per_step] for start in range(0, len(batches), per_step)]
        arrays = [[batch.numpy() for batch in step] for step in steps]

        def in_steps(function: Callable[[object], object], chunks: list[list[object]]) -> list[Callable[[], object]]:
            """One call per step, running `function` on each batch of the step."""
            return [lambda chunk=chunk: [function(batch) for batch in chunk] for chunk in chunks]

        return {
            "eager": {"early exit": in_steps(self.model, steps),
                      "full model": in_steps(functools.partial(full_model_logits, self.model), steps)},
            "compiled": {"early exit": in_steps(self.compiled_model, steps),
                         "full model": in_steps(self.compiled_full, steps)},
            "onnxruntime": {"early exit": in_steps(self.session, arrays),
                            "full model": in_steps(lambda array: self.full_session.run(None, {"pixel_values": array}),
                                                   arrays)},
        }


def check_engines_agree(engines: Engines, images: torch.Tensor) -> torch.Tensor:
    """The three engines give the same exit layers (and close logits); returns them."""
    with torch.inference_mode():
        eager = engines.model(images)
        compiled = engines.compiled_model(images)
    logits, exit_layer = engines.session(images.numpy())
    for name, layers, values in (("compiled", compiled.exit_layer.numpy(), compiled.logits.numpy()),
                                 ("onnxruntime", exit_layer, logits)):
        agree = (layers == eager.exit_layer.numpy()).mean()
        difference = np.abs(values - eager.logits.numpy()).max()
        print(f"  {name}: {100 * agree:.1f}% of exit layers equal eager's, logits within {difference:.1e}")
    return eager.exit_layer


def time_engines(engines: Engines, profile: FlopsProfile, images: torch.Tensor, repeats: int) -> None:
    engines.sync_settings()
    exit_layer = check_engines_agree(engines, images)
    flops_speedup = profile.flops_speedup(exit_layer)
    print(f"  exit layers {torch.bincount(exit_layer, minlength=13)[1:].tolist()} (layers 1..12), FLOPs speed-up "
          f"{flops_speedup:.3f}")
    for batch_size in BATCH_SIZES:
        ways = engines.ways(list(images.split(batch_size)))
        with torch.inference_mode():
            times = stepwise_round_times({f"{engine}/{kind}": steps for engine, pair in ways.items()
                                          for kind, steps in pair.items()}, repeats)
        early = {engine: statistics.median(times[f"{engine}/early exit"]) for engine in ways}
        for engine in ways:
            ratios = [full / early_exit for full, early_exit in zip(times[f"{engine}/full model"],
                                                                    times[f"{engine}/early exit"])]
            measured = statistics.median(ratios)
            print(f"  batch {batch_size:>2} {engine:>11}: early exit {len(images) / early[engine]:8.1f} images/s, "
                  f"full model {len(images) / statistics.median(times[f'{engine}/full model']):8.1f} images/s, "
                  f"measured speed-up {measured:.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f}), "
                  f"measured / FLOPs = {measured / flops_speedup:.3f}")
        fastest = min(early, key=early.get)
        print(f"  batch {batch_size:>2}: fastest early exit {fastest}, {early['eager'] / early[fastest]:.2f}x eager's")


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    splits = digits_splits()
    model = benchmark_model(splits, args.checkpoint, args.train_epochs)
    profile = profile_flops(model)
    images = splits["test"][0][:args.images]
    with tempfile.TemporaryDirectory() as export_dir:
        engines = Engines(model, export_dir, args.exporter, args.threads)
        for budget in ({"max_accuracy_drop": 1.0}, {"target_speedup": 2.0}):
            calibrate_and_report(model, profile, splits, "confidence", budget)
            time_engines(engines, profile, images, args.repeats)
        write_exit_settings(model.config, spread_settings(model, images))
        print("\nuncalibrated per-exit confidence thresholds that spread the timed images over every exit:")
        time_engines(engines, profile, images, args.repeats)
        write_exit_settings(model.config, ExitSettings("confidence", (1.0,) * model.config.num_exits, 1))
        print("\nno exit fires (confidence > 1): every image runs every block, head and decision; measured / FLOPs "
              "is the share of time the exit heads and decisions cost beyond their FLOPs:")
        time_engines(engines, profile, images, args.repeats)


if __name__ == "__main__":
    main()

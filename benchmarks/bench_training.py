"""Training and early-exit evaluation throughput on whatever device is present, and whether the input keeps up.

    python -m benchmarks.bench_training --json report.json      # paper scale: ViT-B/16 at 224, batch 64
    python -m benchmarks.bench_training --tiny                   # a tiny model, a few steps (the tests run this)

Measures, on CUDA when available (else CPU):
1. the input pipeline: images/s of one loader worker on ImageNet-like JPEGs, crop 224 + flip, uint8 batches
   (`benchmarks.bench_input_pipeline`);
2. training steps, images/s, for the base model (no exits), stage 1 (8 LGViT heads, alternating weighted loss)
   and stage 2 (distillation_LGViT, backbone frozen), in every precision the device trains in (float32 as tf32 on
   a GPU with TF32, else fp32; bf16, fp16 on CUDA; fp32 and bf16 on CPU): AdamW, forward and backward under
   autocast as the Trainer runs them, images already on the device;
3. early-exit evaluation, images/s at batch 64 and 256, in the fastest training precision, with a threshold no
   image reaches (every exit head and decision runs: the cost of a model that is unsure of every image).
It prints, for every stage and precision, how many loader workers one GPU needs to keep up
(training images/s / one worker's images/s) and so which side is the bottleneck with the default worker count,
and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_input_pipeline import image_table, images_per_second, pipelines
from models import DeiTHighwayConfig, DeiTHighwayForImageClassification
from utils.arguments.precision import choose_precision, local_cuda_device
from utils.arguments.workers import available_cpus, default_workers

PAPER_VIT = Path(__file__).resolve().parents[1] / "configs" / "paper" / "models" / "vit-base-patch16-224.json"
LGVIT = dict(highway_type="LGViT", num_early_exits=8, position_exits=[4, 5, 6, 7, 8, 9, 10, 11])
TINY = dict(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64, image_size=16,
            patch_size=4, num_labels=10)
STAGES = {"base": dict(num_early_exits=0), "stage1": dict(LGVIT, train_strategy="alternating_weighted"),
          "stage2": dict(LGVIT, train_strategy="distillation_LGViT")}
DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(stage: str, tiny: bool, device: torch.device) -> DeiTHighwayForImageClassification:
    torch.manual_seed(0)
    config = (DeiTHighwayConfig(**TINY, **STAGES[stage]) if tiny
              else DeiTHighwayConfig.from_pretrained(PAPER_VIT, num_labels=100, **STAGES[stage]))
    return DeiTHighwayForImageClassification(config).to(device)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_rate(model: torch.nn.Module, precision: str, batch_size: int, steps: int,
                  device: torch.device) -> float:
    """Images/s of training steps (forward, backward, AdamW) under autocast in `precision`; one warm-up step."""
    model.train()
    size = model.config.image_size
    images = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.randint(0, model.config.num_labels, (batch_size,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    for step in range(steps + 1):
        if step == 1:
            synchronise(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=DTYPES[precision] or torch.float32,
                            enabled=DTYPES[precision] is not None):
            loss = model(images, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    synchronise(device)
    return steps * batch_size / (time.perf_counter() - start)


def evaluation_rate(model: torch.nn.Module, precision: str, batch_size: int, batches: int,
                    device: torch.device) -> float:
    """Images/s of per-sample early exit with every exit computed and none taken (confidence above 1)."""
    model.eval().config.exit_strategy, model.config.threshold = "confidence", 1.0
    size = model.config.image_size
    images = torch.randn(batch_size, 3, size, size, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=DTYPES[precision] or torch.float32,
                                         enabled=DTYPES[precision] is not None):
        model(images)
        synchronise(device)
        start = time.perf_counter()
        for _ in range(batches):
            model(images)
        synchronise(device)
    return batches * batch_size / (time.perf_counter() - start)


def device_precisions(device: torch.device) -> list[str]:
    """The precisions the Trainer runs on this device (`utils.arguments.precision`)."""
    cuda = local_cuda_device() if device.type == "cuda" else None
    float32 = "tf32" if cuda is not None and cuda.has_tf32 else "fp32"
    names = [float32, "bf16"] if cuda is None or cuda.has_bf16 else [float32]
    if cuda is not None:
        names.append("fp16")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = choose_precision(float32, cuda).tf32
    return names


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    worker_rate = images_per_second(pipelines(image_table("imagenet_jpeg").select(range(args.input_images)),
                                              size=224)["this project (TorchCodec, uint8)"], workers=args.workers)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "batch_size": args.batch_size, "tiny": args.tiny,
                              "input_images_per_second_per_worker": worker_rate, "training": {}, "evaluation": {}}
    precisions = device_precisions(device)
    for stage in STAGES:
        model = build_model(stage, args.tiny, device)
        report["training"][stage] = {precision: training_rate(model, precision, args.batch_size, args.steps, device)
                                     for precision in precisions}
    fastest = max(precisions, key=lambda name: report["training"]["stage1"][name])
    model = build_model("stage2", args.tiny, device)
    report["evaluation"] = {"precision": fastest, **{
        str(batch): evaluation_rate(model, fastest, batch, args.steps, device) for batch in args.eval_batch_sizes}}
    return report


def workers_needed(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Loader workers one device needs per stage and precision: training images/s over one worker's images/s."""
    per_worker = report["input_images_per_second_per_worker"]
    return {stage: {precision: math.ceil(rate / per_worker) for precision, rate in rates.items()}
            for stage, rates in report["training"].items()}


def print_report(report: dict[str, Any]) -> None:
    default = default_workers(1, on_accelerator=report["device"] != "cpu")
    print(f"Device: {report['device']}; batch {report['batch_size']}{' (tiny model)' if report['tiny'] else ''}; "
          f"{available_cpus()} CPU cores; default loader workers per process: {default}")
    print(f"Input pipeline: {report['input_images_per_second_per_worker']:.0f} images/s per worker")
    needed = workers_needed(report)
    for stage, rates in report["training"].items():
        for precision, rate in rates.items():
            workers = needed[stage][precision]
            side = "input" if workers > max(default, 1) else "model"
            print(f"  train {stage:<6} {precision}: {rate:8.1f} images/s; needs {workers} worker(s); bottleneck with "
                  f"the default workers: {side}")
    evaluation = report["evaluation"]
    for batch, rate in evaluation.items():
        if batch != "precision":
            print(f"  early-exit evaluation, batch {batch} ({evaluation['precision']}): {rate:8.1f} images/s; "
                  f"needs {math.ceil(rate / report['input_images_per_second_per_worker'])} worker(s)")
    report["workers_needed"] = needed


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 12-layer width-32 model on 16x16 images (quick check)")
    parser.add_argument("--batch_size", type=int, default=64, help="training batch (the paper's per-GPU 64)")
    parser.add_argument("--eval_batch_sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (and evaluation batches) per measurement")
    parser.add_argument("--workers", type=int, default=1, help="loader workers timed for the input rate (1: per "
                                                               "worker; 0: in this process)")
    parser.add_argument("--input_images", type=int, default=256, help="JPEGs timed through the input pipeline")
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

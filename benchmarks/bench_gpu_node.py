"""The paper's three training stages for a few optimizer steps each, through the real training entry point: the
check to run first on a new GPU node.

    python -m benchmarks.bench_gpu_node                 # ViT-B/16 at 224, global batch 192, over every visible GPU
    python -m benchmarks.bench_gpu_node --json node.json
    python -m benchmarks.bench_gpu_node --tiny          # a tiny model on 16x16 images, one process (the tests)

Writes a synthetic image folder of JPEGs (ImageNet-like 500x375 photographs, or small ones with `--tiny`) into a
temporary directory, then runs `run_classification.py` with the paper's presets (precision auto, the default loader
workers, the global batch split over the processes) for each stage, chained as the recipe chains them:

- base: ViT-B/16 from `configs/paper/models/vit-base-patch16-224.json`, random weights, no exits;
- stage 1: 8 LGViT heads, alternating weighted loss (`configs/paper/stage1.yaml` + `configs/methods/LGViT.yaml`),
  starting from the base model;
- stage 2: self-distillation with the backbone frozen (`configs/paper/stage2.yaml`), starting from stage 1.

Like the launchers, it starts one process per visible GPU with torchrun (one plain process without a GPU), after
printing the plan of `utils.training.launch_plan`. Every step is logged (`--logging_steps 1`); from the runs'
`trainer_state.json` it reports per stage, leaving out the first step(s): images/s, the share of the step time the
training loop waited for data (`data_wait_share`, `utils.training.loss_window`), the peak GPU memory
(`torch.cuda.max_memory_allocated`, the largest over the processes) and, on an A100 or H100, the images/s per GPU as
a fraction of an approximate bf16 training throughput of plain ViT-B/16 on that GPU (docs/gpus-and-clusters.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "paper"
PAPER_CONFIG = PRESETS / "models" / "vit-base-patch16-224.json"
TINY_CONFIG = ROOT / "configs" / "digits" / "tiny_deit.json"
STAGES = {  # stage: (presets, the stage it starts from)
    "base": ([PRESETS / "base.yaml"], None),
    "stage1": ([PRESETS / "stage1.yaml", ROOT / "configs" / "methods" / "LGViT.yaml"], "base"),
    "stage2": ([PRESETS / "stage2.yaml"], "stage1"),
}
# Approximate bf16 (automatic mixed precision) training throughput of plain ViT-B/16 at 224 on one GPU, images/s;
# docs/gpus-and-clusters.md ("First run on a GPU node") says where these come from and how rough they are.
REFERENCE_IMAGES_PER_SECOND = {"H100": 1460.0, "A100": 900.0}
CLASSES = 10
WORKER_FLAG = "--stage_worker"


def photo_like(height: int, width: int, seed: int) -> Image.Image:
    """Smooth colour gradients with noise: JPEG compresses it, and decodes it, about as it does a photograph."""
    rows, columns = np.mgrid[0:height, 0:width]
    channels = [np.sin(columns / (13 + seed % 7) + c) * 60 + np.cos(rows / (19 + c)) * 60 + 128 for c in range(3)]
    noise = np.random.default_rng(seed).normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.stack(channels, -1) + noise, 0, 255).astype(np.uint8))


def write_image_folder(root: Path, train_images: int, tiny: bool) -> None:
    """`train_images` JPEGs in `CLASSES` class folders under root/train, one per class under root/val (so that no
    training image is held out for evaluation). A few distinct images are written repeatedly: decoding costs the
    same."""
    height, width = (24, 24) if tiny else (375, 500)
    encoded = []
    for seed in range(min(train_images, 32)):
        buffer = io.BytesIO()
        photo_like(height, width, seed).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for split, count in (("train", train_images), ("val", CLASSES)):
        for index in range(count):
            folder = root / split / f"class{index % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index}.jpg").write_bytes(encoded[index % len(encoded)])


def stage_arguments(stage: str, work: Path, args: argparse.Namespace) -> list[str]:
    """The run_classification.py arguments of one stage: its presets, then the benchmark's settings."""
    presets, previous = STAGES[stage]
    start = (["--config_name", str(TINY_CONFIG if args.tiny else PAPER_CONFIG), "--backbone", "ViT"]
             if previous is None else ["--model_name_or_path", str(work / previous)])
    return [*map(str, presets), *start,
            "--train_dir", str(work / "images" / "train"), "--validation_dir", str(work / "images" / "val"),
            "--output_dir", str(work / stage), "--cache_dir", str(work / "cache"), "--do_eval", "False",
            "--max_steps", str(args.steps), "--global_batch_size", str(args.global_batch_size),
            "--logging_strategy", "steps", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
            "--load_best_model_at_end", "False", "--overwrite_output_dir", "True", "--report_to", "none",
            "--disable_tqdm", "True"]


def plan_processes(run_arguments: list[str], gpus: int | None) -> tuple[int, list[str]]:
    """Processes per node and the plan's lines, from `utils.training.launch_plan` as the launchers call it."""
    command = [sys.executable, "-m", "utils.training.launch_plan"]
    if gpus is not None:
        command += ["--processes_per_node", str(gpus)]
    finished = subprocess.run([*command, "--", *run_arguments], cwd=ROOT, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"The launch plan refused the run: {finished.stderr.strip()}")
    lines = [line.strip("= ") for line in finished.stderr.splitlines() if line.startswith("===")]
    return int(finished.stdout.strip()), lines


def run_stage(stage: str, work: Path, run_arguments: list[str], processes: int) -> float:
    """Run one stage (torchrun over `processes` GPUs; in this process for 0, as the launchers run one plain
    process without a GPU); returns its wall time in s."""
    if processes == 0:
        started = time.perf_counter()
        stage_worker(str(work / "workers" / stage), run_arguments)
        return time.perf_counter() - started
    entry = ["-m", "benchmarks.bench_gpu_node", WORKER_FLAG, str(work / "workers" / stage), "--", *run_arguments]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    log = work / f"{stage}.log"
    started = time.perf_counter()
    with log.open("w") as output:
        finished = subprocess.run([*launch, *entry], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"Stage {stage} failed (exit status {finished.returncode}); the end of its log:\n{tail}")
    return time.perf_counter() - started


def stage_worker(report_dir: str, run_arguments: list[str]) -> None:
    """One training process: the stage through `run_classification.main`, then its device and peak GPU memory."""
    import torch

    import run_classification

    run_classification.main(run_arguments)
    on_gpu = torch.cuda.is_available()
    record = {"device": torch.cuda.get_device_name() if on_gpu else "cpu",
              "peak_memory_bytes": torch.cuda.max_memory_allocated() if on_gpu else None}
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))


def steady_state(log_history: list[dict[str, Any]], skip_steps: int) -> dict[str, Any]:
    """Images/s and the data-wait share over the logged steps after the first `skip_steps`, each step weighted by
    its time (every step trains the same number of images, so its time is proportional to 1 / its images/s)."""
    steps = [entry for entry in log_history if "images_per_second" in entry and entry["step"] > skip_steps]
    if not steps:
        raise SystemExit(f"No step was logged after the first {skip_steps}: raise --steps above --skip_steps.")
    seconds = [1.0 / entry["images_per_second"] for entry in steps]
    waits = [entry.get("data_wait_share") for entry in steps]
    wait = None if None in waits else sum(share * step for share, step in zip(waits, seconds)) / sum(seconds)
    return {"steps_timed": len(steps), "images_per_second": len(steps) / sum(seconds), "data_wait_share": wait}


def stage_report(work: Path, stage: str, skip_steps: int, processes: int, wall_seconds: float) -> dict[str, Any]:
    """What one finished stage measured: steady-state rates, the device and the peak GPU memory of its processes."""
    state = json.loads((work / stage / "trainer_state.json").read_text())
    report = steady_state(state["log_history"], skip_steps)
    records = [json.loads(path.read_text()) for path in sorted((work / "workers" / stage).glob("rank*.json"))]
    peaks = [record["peak_memory_bytes"] for record in records if record["peak_memory_bytes"] is not None]
    device = records[0]["device"]
    per_gpu = report["images_per_second"] / max(1, processes) if device != "cpu" else None
    report.update(images_per_second_per_gpu=per_gpu, peak_gpu_memory_gib=max(peaks) / 2**30 if peaks else None,
                  device=device, wall_seconds=wall_seconds)
    return report


def reference_rate(device: str, tiny: bool, override: float | None) -> float | None:
    """The bf16 ViT-B/16 images/s to compare one GPU with: `override`, else the entry whose name the device's
    contains; None on CPU, for the tiny model, or for a GPU without an entry."""
    if override is not None:
        return override
    if tiny or device == "cpu":
        return None
    return next((rate for name, rate in REFERENCE_IMAGES_PER_SECOND.items() if name in device.upper()), None)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Write the images, plan the launch and run the stages in order; returns the report."""
    write_image_folder(work / "images", args.global_batch_size * args.steps, args.tiny)
    processes, plan = plan_processes(stage_arguments("base", work, args), args.gpus)
    if args.tiny and args.gpus is None and processes > 1:  # the tiny model: one process is enough
        processes, plan = plan_processes(stage_arguments("base", work, args), 1)
    for line in plan:
        print(f"=== {line} ===", flush=True)
    stages = {}
    for stage in STAGES:
        print(f"=== {stage}: {args.steps} optimizer step(s) ===", flush=True)
        wall = run_stage(stage, work, stage_arguments(stage, work, args), processes)
        stages[stage] = stage_report(work, stage, args.skip_steps, processes, wall)
    device = stages["base"]["device"]
    reference = reference_rate(device, args.tiny, args.reference_images_per_second)
    for report in stages.values():
        per_gpu = report["images_per_second_per_gpu"]
        report["fraction_of_reference"] = per_gpu / reference if reference and per_gpu else None
    return {"device": device, "processes": processes, "plan": plan, "tiny": args.tiny, "steps": args.steps,
            "skip_steps": args.skip_steps, "global_batch_size": args.global_batch_size,
            "reference_images_per_second": reference, "stages": stages}


def shown(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def print_report(report: dict[str, Any]) -> None:
    """The per-stage table."""
    model = "tiny model, 16x16 images" if report["tiny"] else "ViT-B/16 at 224"
    reference = shown(report["reference_images_per_second"], "{:.0f} images/s")
    print(f"Device: {report['device']}; {report['processes'] or 1} process(es); {model}; global batch "
          f"{report['global_batch_size']}; {report['steps']} step(s) per stage, the first {report['skip_steps']} "
          f"left out; reference (bf16 ViT-B/16 per GPU): {reference}")
    print(f"{'stage':<7} {'images/s':>9} {'per GPU':>8} {'data wait':>9} {'peak GPU mem':>12} {'of reference':>12}")
    for stage, values in report["stages"].items():
        print(f"{stage:<7} {values['images_per_second']:>9.1f} "
              f"{shown(values['images_per_second_per_gpu'], '{:.1f}'):>8} "
              f"{shown(values['data_wait_share'], '{:.1%}'):>9} "
              f"{shown(values['peak_gpu_memory_gib'], '{:.1f} GiB'):>12} "
              f"{shown(values['fraction_of_reference'], '{:.0%}'):>12}")


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model, 16x16 images, one process (a quick check)")
    parser.add_argument("--steps", type=int, help="optimizer steps per stage (default 10; 3 with --tiny)")
    parser.add_argument("--skip_steps", type=int, default=1, help="first steps left out of the rates (warm-up)")
    parser.add_argument("--global_batch_size", type=int, help="images per optimizer step over all processes "
                                                               "(default: the paper's 192; 32 with --tiny)")
    parser.add_argument("--gpus", type=int, help="processes (GPUs) to start (default: every visible GPU; 0: one "
                                                 "plain process)")
    parser.add_argument("--reference_images_per_second", type=float,
                        help="bf16 ViT-B/16 images/s of one GPU to compare with (default: by the GPU's name)")
    parser.add_argument("--work_dir", type=Path, help="keep the images, checkpoints and logs here (default: a "
                                                      "temporary directory, removed afterwards)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 10)
    args.global_batch_size = args.global_batch_size or (32 if args.tiny else 192)
    if args.steps <= args.skip_steps:
        raise SystemExit(f"--steps {args.steps} leaves nothing to time after --skip_steps {args.skip_steps}: "
                         "raise --steps.")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        report = run(args, args.work_dir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_node_") as work:
            report = run(args, Path(work))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == [WORKER_FLAG]:
        stage_worker(sys.argv[2], sys.argv[4:])  # sys.argv[3] is "--"
    else:
        main()

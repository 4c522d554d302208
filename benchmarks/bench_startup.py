"""Time from launch to the first training step on an image folder: a first launch, which checks every image, and a
second one, which reuses the check (`utils.data.image_folder`).

    python -m benchmarks.bench_startup [--images 50000] [--processes 2] [--json report.json]

The benchmark writes a folder of `--images` small JPEGs (32x32, 10 classes) in a temporary directory and launches
the same one-step training run (`run_classification.py` through `torchrun --standalone`, `--processes` processes,
gloo on a CPU machine, the tiny configuration of `configs/digits/`) twice on it with a fresh dataset cache. The time
of a launch is measured from outside, from starting torchrun until the Trainer prints the loss of step 1
(`--logging_steps 1`): that step ends only once every process has loaded the data, built the model and taken part
in the gradient all-reduce, so the time covers every process's start-up and one tiny step, and nothing of the
product is changed to measure it. A third launch on the built-in digits (no folder) gives the floor that no data
cache removes: starting Python, importing torch and transformers, building the model, forming the process group.
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
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "configs" / "digits" / "tiny_deit.json"
STEP_LOG = "'loss'"  # the Trainer's log line of a training step's loss
SETUP_LOG = "Data loading:"  # run_classification.py's last line before it loads the data
DISTINCT_IMAGES = 64


def write_folder(root: Path, images: int, classes: int) -> None:
    """`images` 32x32 noise JPEGs spread over `classes` sub-folders (64 distinct images, repeated)."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(DISTINCT_IMAGES):
        buffer = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for label in range(classes):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
    for index in range(images):
        (root / f"class{index % classes}" / f"{index:07d}.jpg").write_bytes(encoded[index % DISTINCT_IMAGES])


def run_arguments(work: Path, name: str, data: list[str]) -> list[str]:
    """The run_classification.py arguments of a one-step run writing to `work/name`."""
    return ["--config_name", str(TINY_CONFIG), *data, "--cache_dir", str(work / "cache"),
            "--output_dir", str(work / name), "--do_train", "--do_eval", "False", "--max_steps", "1",
            "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "True"]


def time_to_first_step(work: Path, name: str, arguments: list[str], processes: int) -> dict[str, float]:
    """Seconds from starting torchrun until the log of step 1's loss (`to_first_step_s`), and from the main
    process's last line before it loads the data until then (`after_imports_s`: without interpreter start and
    imports); the launch's output goes to work/name.log.

    Raises:
        SystemExit: the run failed or never logged a step.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(ROOT / "run_classification.py"), *arguments]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    seen: dict[str, float] = {}
    log = work / f"{name}.log"
    started = time.perf_counter()
    with subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as launch, log.open("w") as output:
        for line in launch.stdout:
            for marker in (SETUP_LOG, STEP_LOG):
                if marker in line:
                    seen.setdefault(marker, time.perf_counter() - started)
            output.write(line)
    if launch.returncode != 0 or len(seen) < 2:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"Launch {name!r} failed (exit status {launch.returncode}); the end of {log}:\n{tail}")
    return {"to_first_step_s": seen[STEP_LOG], "after_imports_s": seen[STEP_LOG] - seen[SETUP_LOG]}


def measure(work: Path, images: int, classes: int, processes: int) -> dict[str, Any]:
    """Write the folder, then time the first launch on it, the second, and the digits floor."""
    started = time.perf_counter()
    write_folder(work / "images", images, classes)
    folder = ["--train_dir", str(work / "images")]
    result: dict[str, Any] = {"images": images, "processes": processes,
                              "folder_written_s": time.perf_counter() - started}
    for name, data in (("first_launch", folder), ("second_launch", folder),
                       ("digits_floor", ["--dataset_name", "digits"])):
        result[name] = time_to_first_step(work, name, run_arguments(work, name, data), processes)
    result["second_over_first"] = {key: result["second_launch"][key] / result["first_launch"][key]
                                   for key in result["first_launch"]}
    return result


def report(result: dict[str, Any]) -> str:
    """The results as lines of text."""
    lines = [f"{result['images']} images, {result['processes']} processes; seconds to the first training step"]
    for key, what in (("to_first_step_s", "from launch"), ("after_imports_s", "after imports")):
        lines.append(f"  {what}: first launch {result['first_launch'][key]:.1f}, second "
                     f"{result['second_launch'][key]:.1f} (second / first = {result['second_over_first'][key]:.2f}),"
                     f" digits without a folder {result['digits_floor'][key]:.1f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the folder (50000 for the documented run)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2, help="training processes per launch (torchrun)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as work:  # removing many files can take minutes
        result = measure(Path(work), args.images, args.classes, args.processes)
        print(report(result), flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

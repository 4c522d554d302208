"""How much a digits recipe's results move with PyTorch's CPU kernel set alone.

PyTorch picks its CPU kernels (AVX-512, AVX2 or plain) from the processor; `ATEN_CPU_CAPABILITY` forces a set. The
same command then differs by floating-point rounding only, so the spread of its results over the kernel sets shows
how stable the recipe is, and what a table made with it can claim. This runs a recipe once under each kernel set
(one subprocess each), prints every stage's accuracy per set and its band (largest minus smallest, in points), and
exits with status 1 when a band is wider than the stated one (accuracy `--max_band` points; LGViT's FLOPs speed-up
`--max_speedup_band` percent of the smallest).

Recipes:
- `quickstart`: `bash scripts/quickstart.sh` (base, stage 1, LGViT after stage 2), about 3 minutes per set on 2 cores;
- `compare`: `DATASET=digits RISK_LEVEL=0.1 bash scripts/compare_methods.sh` (base and each method's final head and
  early exit), about 12 minutes per set;
- `base`: the base stage alone (configs/digits/base.yaml), the short check the tests run (with `--epochs` and
  `--max_train_samples`).

Usage (from the repository root):
python -m benchmarks.bench_reproducibility                       # quickstart, AVX-512, AVX2 and plain kernels
python -m benchmarks.bench_reproducibility --recipe compare --kernel_sets avx2 default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SETS = ("avx512", "avx2", "default")
# What each kernel set's name reads as in torch.backends.cpu.get_cpu_capability().
CAPABILITY_NAMES = {"avx512": "AVX512", "avx2": "AVX2", "default": "DEFAULT"}
# The bands the digits recipes are held to (README, docs/analysis.md).
MAX_BAND_POINTS = 3.0
MAX_SPEEDUP_BAND_PERCENT = 5.0


def available_capability(kernel_set: str) -> str:
    """The kernel set torch runs with when `ATEN_CPU_CAPABILITY=kernel_set` on this processor."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kernel_set}
    finished = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                              env=env, capture_output=True, text=True, check=True)
    return finished.stdout.strip()


def check_kernel_sets(kernel_sets: list[str]) -> None:
    """Refuse, before any training, a kernel set that is unknown or that this processor lacks."""
    unknown = [kernel_set for kernel_set in kernel_sets if kernel_set not in CAPABILITY_NAMES]
    if unknown:
        raise ValueError(f"Unknown kernel set {unknown[0]!r}: use some of {', '.join(KERNEL_SETS)}.")
    for kernel_set in kernel_sets:
        if kernel_set != "default" and available_capability(kernel_set) != CAPABILITY_NAMES[kernel_set]:
            raise ValueError(f"This processor cannot run the {kernel_set} kernels (torch falls back to "
                             f"{available_capability(kernel_set)}): leave {kernel_set} out of --kernel_sets.")


def recipe_command(recipe: str, output_dir: Path, epochs: int | None,
                   max_train_samples: int | None) -> tuple[list[str], dict[str, str]]:
    """The command that runs `recipe` into `output_dir`, and the variables it needs."""
    env = {"OUTPUT_DIR": str(output_dir), "REPORT_TO": "none", "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if epochs is not None:
        env["EPOCHS"] = str(epochs)
    extra = [] if max_train_samples is None else ["--max_train_samples", str(max_train_samples)]
    if recipe == "quickstart":
        if max_train_samples is not None:
            raise ValueError("--max_train_samples applies to the base and compare recipes only.")
        return ["bash", "scripts/quickstart.sh"], env
    if recipe == "compare":
        return ["bash", "scripts/compare_methods.sh", *extra], {**env, "DATASET": "digits", "RISK_LEVEL": "0.1"}
    if recipe == "base":
        command = [sys.executable, "run_classification.py", "configs/digits/base.yaml", "--config_name",
                   "configs/digits/tiny_deit.json", "--output_dir", str(output_dir / "base"), "--report_to", "none",
                   "--disable_tqdm", "True", *extra]
        return command + (["--num_train_epochs", str(epochs)] if epochs is not None else []), env
    raise ValueError(f"Unknown recipe {recipe!r}: use quickstart, compare or base.")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def stage_results(recipe: str, output_dir: Path) -> tuple[dict[str, float], float | None, str]:
    """A finished run's accuracy per stage (percent), LGViT's FLOPs speed-up (None without LGViT) and the kernel
    set its base stage recorded."""
    base = read_json(output_dir / "base" / "eval_results.json")
    accuracies = {"base model": 100 * base["eval_accuracy"]}
    speedup = None
    if recipe == "quickstart":
        results = read_json(output_dir / "results.json")
        accuracies["stage 1 (LGViT heads)"] = 100 * results["stage1_accuracy"]
        accuracies["stage 2 model, full depth"] = 100 * results["lgvit_full_depth_accuracy"]
        accuracies["LGViT after stage 2 (early exit)"] = 100 * results["lgvit_accuracy"]
        speedup = results["lgvit_flops_speedup"]
    elif recipe == "compare":
        for row in read_json(output_dir / "comparison.json")["methods"]:
            accuracies[f"{row['method']} final head"] = 100 * row["final_accuracy"]
            accuracies[f"{row['method']} early exit"] = 100 * row["accuracy"]
            if row["method"] == "LGViT":
                speedup = row["flops_speedup"]
    return accuracies, speedup, base["environment"]["cpu_capability"]


def run_recipe(recipe: str, kernel_set: str, output_dir: Path, epochs: int | None,
               max_train_samples: int | None) -> tuple[dict[str, float], float | None]:
    """Run `recipe` with `ATEN_CPU_CAPABILITY=kernel_set`; returns `stage_results` after checking the kernel set."""
    command, env = recipe_command(recipe, output_dir, epochs, max_train_samples)
    finished = subprocess.run(command, cwd=ROOT, env={**os.environ, **env, "ATEN_CPU_CAPABILITY": kernel_set},
                              capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed under {kernel_set} kernels:\n{finished.stderr[-3000:]}")
    accuracies, speedup, capability = stage_results(recipe, output_dir)
    if capability != CAPABILITY_NAMES[kernel_set]:
        raise RuntimeError(f"The run asked for {kernel_set} kernels but recorded {capability}.")
    return accuracies, speedup


def bands(results: dict[str, tuple[dict[str, float], float | None]]) -> tuple[dict[str, float], float | None]:
    """Per stage, the largest minus the smallest accuracy over the kernel sets (points); and the FLOPs speed-up's
    spread as a percentage of its smallest value (None without a speed-up)."""
    stages = next(iter(results.values()))[0]
    accuracy_bands = {stage: max(r[0][stage] for r in results.values()) - min(r[0][stage] for r in results.values())
                      for stage in stages}
    speedups = [speedup for _, speedup in results.values() if speedup is not None]
    speedup_band = 100 * (max(speedups) - min(speedups)) / min(speedups) if speedups else None
    return accuracy_bands, speedup_band


def too_wide(band: float, limit: float) -> str:
    return "" if band <= limit else " (too wide)"


def report(results: dict[str, tuple[dict[str, float], float | None]], max_band: float,
           max_speedup_band: float) -> bool:
    """Print the table of results and bands; True when every band is within the stated one."""
    accuracy_bands, speedup_band = bands(results)
    sets = list(results)
    print(f"\n| stage | {' | '.join(sets)} | band (points) |")
    print(f"|---|{'---|' * len(sets)}---|")
    for stage, band in accuracy_bands.items():
        cells = " | ".join(f"{results[s][0][stage]:.2f}%" for s in sets)
        print(f"| {stage} | {cells} | {band:.2f}{too_wide(band, max_band)} |")
    within = all(band <= max_band for band in accuracy_bands.values())
    if speedup_band is not None:
        cells = " | ".join(f"{results[s][1]:.3f}x" for s in sets)
        print(f"| LGViT FLOPs speed-up | {cells} | {speedup_band:.2f}%{too_wide(speedup_band, max_speedup_band)} |")
        within = within and speedup_band <= max_speedup_band
    print(f"\nStated bands: {max_band:g} points of accuracy, {max_speedup_band:g}% of FLOPs speed-up: "
          f"{'all within' if within else 'EXCEEDED'}.")
    return within


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=("quickstart", "compare", "base"), default="quickstart")
    parser.add_argument("--kernel_sets", nargs="+", default=list(KERNEL_SETS),
                        help="ATEN_CPU_CAPABILITY values to run under (default: all three)")
    parser.add_argument("--epochs", type=int, help="epochs of every training stage (default: the recipe's)")
    parser.add_argument("--max_train_samples", type=int, help="training images (base and compare recipes)")
    parser.add_argument("--max_band", type=float, default=MAX_BAND_POINTS, help="accuracy band allowed, in points")
    parser.add_argument("--max_speedup_band", type=float, default=MAX_SPEEDUP_BAND_PERCENT,
                        help="FLOPs speed-up band allowed, in percent of the smallest")
    parser.add_argument("--output_dir", type=Path, help="where the runs go, one folder per kernel set "
                                                         "(default: a temporary folder, removed afterwards)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the recipe under each kernel set; returns the exit status (1 when a band is too wide)."""
    args = build_parser().parse_args(argv)
    if len(args.kernel_sets) < 2:
        raise ValueError("A band needs at least two kernel sets in --kernel_sets.")
    check_kernel_sets(args.kernel_sets)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.output_dir or Path(scratch)
        results = {}
        for kernel_set in args.kernel_sets:
            print(f"Running the {args.recipe} recipe with ATEN_CPU_CAPABILITY={kernel_set} ...", flush=True)
            results[kernel_set] = run_recipe(args.recipe, kernel_set, root / kernel_set, args.epochs,
                                             args.max_train_samples)
        return 0 if report(results, args.max_band, args.max_speedup_band) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What a run computed with, saved with its results: PyTorch's CPU kernel set and the library versions.

Two runs of the same command can differ by floating-point rounding alone: PyTorch picks its CPU kernels (AVX-512,
AVX2 or plain) from the processor, or from `ATEN_CPU_CAPABILITY`. Each stage's `train_results.json`,
`eval_results.json` and `all_results.json` carry this record under `environment`, so two tables can be compared.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

# The libraries whose releases change what a run computes.
LIBRARIES = ("torch", "torchvision", "transformers", "accelerate", "datasets", "numpy", "scikit-learn", "scipy")


def run_environment() -> dict[str, Any]:
    """The kernel set (`torch.backends.cpu.get_cpu_capability()`, e.g. "AVX512"), the machine type, the GPU (None
    without one), Python and the installed version of each library in `LIBRARIES` (None when not installed)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "libraries": versions,
    }

"""Which numeric precision a run trains in: `--precision auto|bf16|fp16|fp32|tf32` (`PRECISION` in the launchers).

- `auto`: bf16 mixed precision on CUDA GPUs that support it (compute capability 8.0 and newer: Ampere, Hopper, ...),
  fp16 mixed precision with loss scaling on older CUDA GPUs, fp32 on CPU (and other accelerators).
- `bf16` / `fp16`: autocast in that type around the forward pass (weights, optimizer and losses stay float32; fp16
  adds loss scaling). The float32 work of these runs (and of `auto`) uses TF32 matrix products on GPUs that have
  them, unless `--tf32 False` asks for IEEE float32 there.
- `fp32`: IEEE float32 throughout, TF32 off for matrix products and convolutions: the paper's setting.
- `tf32`: float32 weights and activations with TF32 matrix products and convolutions (inputs rounded to 10 mantissa
  bits on the tensor cores), on CUDA GPUs of compute capability 8.0 and newer only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PRECISIONS = ("auto", "bf16", "fp16", "fp32", "tf32")
# Compute capability from which CUDA GPUs have bfloat16 and TF32 tensor cores (Ampere).
AMPERE = (8, 0)


@dataclass(frozen=True)
class CudaDevice:
    """What the precision choice needs to know about a CUDA GPU."""

    name: str
    capability: tuple[int, int]

    @property
    def has_bf16(self) -> bool:
        return self.capability >= AMPERE

    @property
    def has_tf32(self) -> bool:
        return self.capability >= AMPERE


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved precision: `mixed` is `bf16`, `fp16` or None (fp32, tf32), `tf32` whether TF32 products are on,
    and `reason` says why, for the logs and the launchers."""

    name: str
    tf32: bool
    reason: str

    @property
    def mixed(self) -> str | None:
        return self.name if self.name in ("bf16", "fp16") else None


def local_cuda_device() -> CudaDevice | None:
    """The CUDA GPU this process uses (LOCAL_RANK picks it under torchrun), or None without one."""
    import torch  # here, so that the launchers' planning imports no torch when it needs no GPU

    if not torch.cuda.is_available():
        return None
    index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    properties = torch.cuda.get_device_properties(index)
    return CudaDevice(properties.name, (properties.major, properties.minor))


def choose_precision(requested: str, device: CudaDevice | None) -> PrecisionChoice:
    """Resolve `requested` (one of PRECISIONS) for `device` (None: CPU).

    Raises:
        ValueError: an unknown precision, bf16 asked of a CUDA GPU without bfloat16, fp16 without a CUDA GPU
            (accelerate runs fp16 autocast and loss scaling on CUDA only; it would silently train in fp32), or tf32
            without a CUDA GPU that has TF32.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision {requested!r} (PRECISION in the launchers) must be one of "
                         f"{', '.join(PRECISIONS)}.")
    if requested == "tf32" and (device is None or not device.has_tf32):
        where = "without a CUDA GPU" if device is None else f"on {device.name}"
        raise ValueError(f"--precision tf32 needs a CUDA GPU of compute capability 8.0 or newer (TF32 tensor cores); "
                         f"{where} there is none. Use --precision fp32 (PRECISION=fp32), the same float32 training "
                         "with IEEE products.")
    if device is None:
        if requested == "fp16":
            raise ValueError("--precision fp16 (loss-scaled float16 mixed precision) runs on CUDA GPUs only; without "
                             "one use bf16 or fp32 (auto picks fp32).")
        if requested == "auto":
            return PrecisionChoice("fp32", False, "auto without a CUDA GPU: fp32 (PRECISION=bf16 for CPU autocast)")
        return PrecisionChoice(requested, False, f"{requested} as asked, without a CUDA GPU")
    where = f"{device.name} (compute capability {device.capability[0]}.{device.capability[1]})"
    if requested == "bf16" and not device.has_bf16:
        raise ValueError(f"--precision bf16 needs a GPU with bfloat16 (compute capability 8.0 or newer); {where} has "
                         "none. Use --precision fp16 (PRECISION=fp16) or auto.")
    if requested == "fp32":
        return PrecisionChoice("fp32", False, f"fp32 as asked, on {where}: IEEE float32, TF32 off")
    if requested == "tf32":
        return PrecisionChoice("tf32", True, f"tf32 as asked, on {where}: float32 with TF32 matrix products")
    if requested == "auto":
        name = "bf16" if device.has_bf16 else "fp16"
        reason = f"auto on {where}: " + ("bf16 mixed precision" if device.has_bf16 else
                                         "fp16 mixed precision with loss scaling (no bfloat16 on this GPU)")
    else:
        name, reason = requested, f"{requested} as asked, on {where}"
    if device.has_tf32:
        reason += "; TF32 matrix products for float32 work"
    return PrecisionChoice(name, device.has_tf32, reason)

"""Keeping the paper's global batch on any number of processes (`--global_batch_size`, `GLOBAL_BATCH_SIZE`).

The paper trained with 64 images per GPU on 3 GPUs: a global batch of 192. A run with another number of processes
keeps that batch (and so the paper's recipe: learning rate, steps per epoch) by choosing the per-device batch and
the gradient accumulation steps such that per-device batch x accumulation steps x processes = global batch, with the
fewest accumulation steps whose per-device batch fits the largest one allowed (`--per_device_train_batch_size`,
64 in the presets): 1 GPU: 64 x 3 steps; 2: 48 x 2; 3: 64 x 1; 4: 48 x 1; 8: 24 x 1; 16: 12 x 1.

What a split cannot keep is what one device's batch sees: the BatchNorm of LGViT's local perception heads and the
sample-similarity loss of Swin's stage 2 compute their statistics over the micro-batch of one device, 64 images in
the paper's run. The largest per-device batch that divides the share keeps 64 where a split allows it (1 or 3
GPUs); elsewhere the launch plan and the run's log say how many images the statistics see.
"""

from __future__ import annotations

from dataclasses import dataclass

# Images per GPU in the paper's run (3 GPUs x 64): what batch statistics saw there.
PAPER_PER_DEVICE_BATCH = 64


@dataclass(frozen=True)
class BatchSplit:
    """How a global batch is made: `per_device` images on each of `processes`, `accumulation` times per step."""

    global_batch: int
    processes: int
    per_device: int
    accumulation: int

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.processes} process(es) x {self.per_device} per device x "
                f"{self.accumulation} accumulation step(s)")

    def statistics_note(self) -> str | None:
        """What batch statistics see when it differs from the paper's run; None when it is the same."""
        if self.per_device == PAPER_PER_DEVICE_BATCH:
            return None
        return (f"batch statistics (LGViT heads' BatchNorm, Swin's stage-2 sample similarity) see {self.per_device} "
                f"images per device; the paper's run: {PAPER_PER_DEVICE_BATCH}")


def split_global_batch(global_batch: int, processes: int, max_per_device: int) -> BatchSplit:
    """The split of `global_batch` over `processes` with the fewest accumulation steps and at most `max_per_device`
    images per device.

    Raises:
        ValueError: no split exists (the global batch is not a multiple of the process count, or no divisor of its
            share fits `max_per_device`), with the nearest global batches that would split.
    """
    if global_batch < 1 or processes < 1 or max_per_device < 1:
        raise ValueError(f"Global batch ({global_batch}), processes ({processes}) and the largest per-device batch "
                         f"({max_per_device}) must be positive.")
    if global_batch % processes == 0:
        share = global_batch // processes
        for accumulation in range(1, share + 1):
            if share % accumulation == 0 and share // accumulation <= max_per_device:
                return BatchSplit(global_batch, processes, share // accumulation, accumulation)
    lower = global_batch - global_batch % processes
    raise ValueError(
        f"The global batch of {global_batch} cannot be split over {processes} processes: it must be a multiple of "
        f"the process count (e.g. {lower or processes} or {lower + processes}). Set GLOBAL_BATCH_SIZE (or "
        f"--global_batch_size) to such a value, or run on a number of GPUs that divides {global_batch}.")

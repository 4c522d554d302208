"""How many data-loader worker processes a training process starts by default (`--dataloader_num_workers`,
`NUM_WORKERS` in the launchers).

On a GPU the model waits for images unless decoding and augmentation run beside it: each process takes the CPU cores
it may use (its CPU affinity, e.g. what SLURM or a container grants) shared among the processes of its node, keeps
one for itself, and starts a worker per remaining core, at most `MAX_WORKERS`. Without an accelerator the model
itself computes on those cores, so workers would only compete with it: the default is 0 there.
`benchmarks/bench_training.py` measures how many workers a GPU needs.
"""

from __future__ import annotations

import os

MAX_WORKERS = 8


def available_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(processes_per_node: int, on_accelerator: bool, cpus: int | None = None) -> int:
    """Loader workers per process: 0 without an accelerator, else the node's cores shared among its processes,
    less one for the process itself, capped at `MAX_WORKERS`."""
    if not on_accelerator:
        return 0
    cpus = available_cpus() if cpus is None else cpus
    return max(0, min(MAX_WORKERS, cpus // max(1, processes_per_node) - 1))

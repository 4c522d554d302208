"""What a launcher in `scripts/` is about to start, decided and printed before anything runs.

    python -m utils.training.launch_plan --nodes 2 --processes_per_node 8 -- <run_classification.py arguments>

Reads the run's settings from its argument list (preset files first, later values winning, as
`run_classification.py` reads them) and prints, on standard error, the processes, the precision, the split of the
global batch and the loader workers, each decided by the same functions the run itself uses
(`utils.arguments.precision`, `batch_split`, `workers`). Prints the processes per node on standard output for the
launcher (0: no GPU, one plain process). Exits with status 2 and the reason when the run cannot start (no split of
the global batch, bf16 on a GPU without it, several nodes without GPUS_PER_NODE on a CPU machine).

A dry run can plan for another machine: with `DRY_RUN=1`, `PLAN_GPU="NVIDIA H100 80GB HBM3:9.0"` (the GPU's name
and compute capability) and `PLAN_CPUS=72` (the node's CPU cores) stand for the node's hardware, so a machine without
a GPU shows the precision and loader workers of a GPU node (`GPUS_PER_NODE` gives its GPU count). Without `DRY_RUN`
they are refused: a real run plans for the hardware it finds.

Only the standard library and yaml are imported unless GPUs must be counted, so planning takes well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

from utils.arguments.batch_split import BatchSplit, split_global_batch
from utils.arguments.files import ARGUMENT_FILE_SUFFIXES, read_argument_file
from utils.arguments.precision import CudaDevice, PrecisionChoice, choose_precision, local_cuda_device
from utils.arguments.workers import default_workers

# Settings the plan reads, with transformers' defaults where the run has one.
PLANNED = {"precision": None, "global_batch_size": None, "per_device_train_batch_size": 8,
           "dataloader_num_workers": None, "do_train": False}


def run_settings(arguments: list[str]) -> dict[str, Any]:
    """The planned settings of a run_classification.py argument list: argument files, then `--name value` or
    `--name=value` flags, later values winning."""
    settings = dict(PLANNED)
    index = 0
    while index < len(arguments) and arguments[index].endswith(ARGUMENT_FILE_SUFFIXES):
        settings.update({name: value for name, value in read_argument_file(arguments[index]).items()
                         if name in PLANNED})
        index += 1
    flags, position = arguments[index:], 0
    while position < len(flags):
        token = flags[position]
        position += 1
        if not token.startswith("--"):
            continue
        name, equals, value = token[2:].partition("=")
        if not equals:
            if position < len(flags) and not flags[position].startswith("--"):
                value, position = flags[position], position + 1
            else:
                value = "True"  # a bare boolean flag, as HfArgumentParser reads it
        if name in PLANNED:
            settings[name] = value
    return settings


def as_int(value: Any) -> int | None:
    return None if value in (None, "", "None", "none") else int(value)


@dataclass(frozen=True)
class LaunchPlan:
    """The processes of a launch and how each computes."""

    nodes: int
    processes_per_node: int  # 0: no GPU, one plain process
    precision: PrecisionChoice | None
    batch: BatchSplit | None
    workers: int
    planned_for: str | None = None  # the hardware of PLAN_GPU / PLAN_CPUS, when a dry run describes another node

    @property
    def processes(self) -> int:
        return self.nodes * max(1, self.processes_per_node)

    def lines(self) -> list[str]:
        where = (f"{self.nodes} node(s) x {self.processes_per_node} process(es) (torchrun)"
                 if self.processes_per_node else "1 process (no GPU: plain python)")
        lines = [f"planned for: {self.planned_for}"] if self.planned_for else []
        lines.append(f"processes: {where}")
        if self.precision is not None:
            lines.append(f"precision: {self.precision.name} ({self.precision.reason})")
        if self.batch is not None:
            lines.append(f"batch: {self.batch.describe()}")
            if self.batch.statistics_note() is not None:
                lines.append(self.batch.statistics_note())
        lines.append(f"data loading: {self.workers} worker process(es) per training process")
        return lines


def plan_launch(settings: dict[str, Any], nodes: int, processes_per_node: int, device: CudaDevice | None,
                cpus: int | None = None, planned_for: str | None = None) -> LaunchPlan:
    """Decide precision, batch split and workers for `nodes` x `processes_per_node` processes on `device` (the
    CUDA GPU of the first process; None without one) with `cpus` cores per node (None: this process's)."""
    precision = None if settings["precision"] is None else choose_precision(str(settings["precision"]), device)
    processes = nodes * max(1, processes_per_node)
    batch = None
    if str(settings["do_train"]).lower() == "true" and as_int(settings["global_batch_size"]):  # 0: rule off
        batch = split_global_batch(as_int(settings["global_batch_size"]), processes,
                                   as_int(settings["per_device_train_batch_size"]))
    workers = as_int(settings["dataloader_num_workers"])
    if workers is None:
        workers = default_workers(max(1, processes_per_node), on_accelerator=device is not None, cpus=cpus)
    return LaunchPlan(nodes, processes_per_node, precision, batch, workers, planned_for)


def planned_hardware(environment: dict[str, str], per_node: int | None) -> tuple[CudaDevice | None, int | None]:
    """The GPU (`PLAN_GPU`, "name:major.minor") and CPU cores (`PLAN_CPUS`) a dry run plans for; (None, None)
    when neither is set.

    Raises:
        ValueError: either set without DRY_RUN, a malformed value, or PLAN_GPU without GPUS_PER_NODE.
    """
    gpu, cpus = environment.get("PLAN_GPU"), environment.get("PLAN_CPUS")
    if not gpu and not cpus:
        return None, None
    if not environment.get("DRY_RUN"):
        raise ValueError("PLAN_GPU and PLAN_CPUS describe another machine for a dry run only: set DRY_RUN=1, or "
                         "unset them to run on the hardware at hand.")
    device = None
    if gpu:
        name, _, capability = gpu.rpartition(":")
        major, _, minor = capability.partition(".")
        if not (name and major.isdigit() and minor.isdigit()):
            raise ValueError(f"PLAN_GPU={gpu!r} must be the GPU's name and compute capability, e.g. "
                             "PLAN_GPU='NVIDIA H100 80GB HBM3:9.0'.")
        if not per_node:
            raise ValueError("PLAN_GPU needs GPUS_PER_NODE, the planned node's GPU count.")
        device = CudaDevice(name, (int(major), int(minor)))
    if cpus and not cpus.isdigit():
        raise ValueError(f"PLAN_CPUS={cpus!r} must be the planned node's CPU core count, e.g. PLAN_CPUS=72.")
    return device, int(cpus) if cpus else None


def describe_hardware(device: CudaDevice | None, per_node: int, cpus: int | None) -> str:
    """The planned node in words, for the plan's first line."""
    gpus = f"{per_node} x {device.name} (PLAN_GPU)" if device else "this machine's GPUs"
    cores = f"{cpus} CPU cores (PLAN_CPUS)" if cpus else "this machine's CPU cores"
    return f"a node of {gpus} and {cores}; nothing runs (DRY_RUN)"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this module."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1, help="machines of the run (NNODES)")
    parser.add_argument("--processes_per_node", type=as_int, default=None,
                        help="processes per machine (GPUS_PER_NODE; default: this machine's GPU count)")
    parser.add_argument("run_arguments", nargs=argparse.REMAINDER, help="-- then the run_classification.py arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    run_arguments = arguments.run_arguments[1:] if arguments.run_arguments[:1] == ["--"] else arguments.run_arguments
    per_node = arguments.processes_per_node
    try:
        device, cpus = planned_hardware(dict(os.environ), per_node)
        planned_for = describe_hardware(device, per_node, cpus) if device or cpus else None
        if device is None and (per_node is None or per_node > 0):
            import torch  # only when GPUs must be counted or described

            per_node = torch.cuda.device_count() if per_node is None else per_node
            device = local_cuda_device() if torch.cuda.is_available() else None
        if arguments.nodes > 1 and per_node == 0:
            raise ValueError("Several nodes (NNODES > 1) need GPUS_PER_NODE, the processes to start on each node "
                             "(on CPU machines too).")
        plan = plan_launch(run_settings(run_arguments), arguments.nodes, per_node, device, cpus, planned_for)
    except ValueError as error:
        print(f"Cannot launch: {error}", file=sys.stderr)
        return 2
    for line in plan.lines():
        print(f"=== {line} ===", file=sys.stderr)
    if per_node > 0 and device is None:
        print(f"=== note: {per_node} process(es) per node planned on a machine without a CUDA GPU: the precision and "
              "loader workers above are this machine's; PLAN_GPU and PLAN_CPUS with DRY_RUN=1 plan a GPU node's ===",
              file=sys.stderr)
    print(plan.processes_per_node)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""transformers' TrainingArguments with this project's defaults and checks: precision, the global batch, loader
workers, and the CPU settings distributed runs need."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments as HfTrainingArguments

from utils.arguments.batch_split import BatchSplit, split_global_batch
from utils.arguments.precision import PRECISIONS, PrecisionChoice, choose_precision, local_cuda_device
from utils.arguments.workers import default_workers

logger = logging.getLogger(__name__)


def world_size() -> int:
    """Processes of the run (torchrun's WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class TrainingArguments(HfTrainingArguments):
    """transformers' TrainingArguments with these changes:

    - `overwrite_output_dir`, which transformers 5 dropped, is back (the original rule: a non-empty output dir is an
      error unless overwriting or resuming); `remove_unused_columns` defaults to False (the original scripts always
      passed that);
    - `precision` (`utils.arguments.precision`) sets `bf16`, `fp16` and `tf32` for the device the process runs on;
    - `global_batch_size` (`utils.arguments.batch_split`) sets the per-device batch and the gradient accumulation
      steps from the number of processes;
    - `dataloader_num_workers` defaults to a count from the CPU cores (`utils.arguments.workers`), and workers are
      persistent by default (the per-epoch augmentation seeds reach them through shared memory);
    - the training step never waits for the device: `logging_nan_inf_filter` defaults to False (transformers' filter
      reads every micro-batch's loss on the host; a NaN or infinite loss then shows in the logged loss instead of
      being replaced), and `ddp_find_unused_parameters` to False (every trainable parameter gets a gradient at every
      step, the alternating strategies keeping the exits in the graph with zero-weighted terms, so DDP need not
      search the graph after each backward); on an accelerator, batches go from pinned memory to the device without
      blocking the host (accelerate's `non_blocking` loader option, unless `--accelerator_config` is given);
    - `check_only` stops a run once its arguments, data splits and model configuration are checked;
    - without an accelerator, memory is not pinned and `use_cpu` is on (CPU mixed precision and CPU distributed
      runs need it: otherwise accelerate starts the process group but not distributed mode, and each rank evaluates
      its shard with nothing gathered).
    """

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into a non-empty output dir instead of resuming from its checkpoint."}
    )
    # The collator needs the `image` column, which the model's forward does not take.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False (images are decoded late)."})
    precision: str | None = field(
        default=None,
        metadata={"help": f"One of {', '.join(PRECISIONS)}: auto is bf16 mixed precision on CUDA GPUs with bfloat16, "
                          "fp16 on older ones, fp32 on CPU, with TF32 products for the float32 work of mixed "
                          "precision on GPUs that have them; fp32 is IEEE float32 throughout (TF32 off, the paper's "
                          "setting); tf32 is float32 with TF32 products (GPUs of compute capability 8.0 and newer). "
                          "None keeps --bf16/--fp16/--tf32 as given."},
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "Images per optimizer step over all processes (the paper: 192); the per-device batch and "
                          "gradient accumulation follow from the process count, --per_device_train_batch_size being "
                          "the largest per-device batch. 0 turns the rule off (e.g. over a preset's 192): "
                          "--per_device_train_batch_size and --gradient_accumulation_steps then apply as given."},
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={"help": "Loader worker processes per training process (default: one per CPU core this process may "
                          "use, shared among the node's processes, less one, at most 8; 0 without an accelerator)."},
    )
    dataloader_persistent_workers: bool | None = field(
        default=None, metadata={"help": "Keep loader workers alive between epochs (default: on when there are any)."}
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Replace a NaN or infinite micro-batch loss in the logged loss by the running mean; reads "
                          "every loss on the host, which makes the GPU wait (default: off)."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "DDP's search for parameters without a gradient after every backward (default: off; no "
                          "strategy leaves a trainable parameter unused)."},
    )
    check_only: bool = field(
        default=False,
        metadata={"help": "Check the arguments, the data splits and the model configuration against what the run "
                          "asks (e.g. a calibration split too small to certify the budget), then stop: no model is "
                          "built and nothing is written."},
    )

    def __post_init__(self) -> None:
        if self.remove_unused_columns:
            raise ValueError("--remove_unused_columns must be False: the transforms read the `image` column.")
        if not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for; torch warns at every epoch otherwise
            self.use_cpu = True
        elif self.accelerator_config is None:
            self.accelerator_config = {"non_blocking": True}
        self.precision_choice = self.apply_precision()
        self.batch_split = self.apply_global_batch()
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                                          on_accelerator=not self.use_cpu)
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        super().__post_init__()

    def apply_precision(self) -> PrecisionChoice | None:
        """Set `bf16`, `fp16` and (unless given) `tf32` from `precision`; None when no precision was asked for.

        A `--bf16`, `--fp16` or `--tf32` given beside `--precision` must agree with it; the one freedom left is
        `--tf32 False` beside a mixed precision, for IEEE float32 in the work autocast leaves in float32.
        """
        if self.precision is None:
            return None
        choice = choose_precision(self.precision, None if self.use_cpu else local_cuda_device())
        if (self.bf16 and choice.mixed != "bf16") or (self.fp16 and choice.mixed != "fp16"):
            raise ValueError(f"--precision {self.precision} means {choice.name} here ({choice.reason}), which "
                             "contradicts --bf16/--fp16: give only one of them.")
        if self.tf32 is True and not choice.tf32:
            raise ValueError(f"--precision {self.precision} means {choice.name} here ({choice.reason}), with TF32 "
                             "off, which contradicts --tf32 True: use --precision tf32 (PRECISION=tf32) on a GPU "
                             "that has TF32, or drop --tf32.")
        if self.tf32 is False and choice.name == "tf32":
            raise ValueError("--precision tf32 (float32 with TF32 products) contradicts --tf32 False: use --precision "
                             "fp32 (PRECISION=fp32) for IEEE float32.")
        self.bf16, self.fp16 = choice.mixed == "bf16", choice.mixed == "fp16"
        if self.tf32 is None:
            self.tf32 = choice.tf32
        return choice

    def apply_global_batch(self) -> BatchSplit | None:
        """Set the per-device batch and accumulation steps from `global_batch_size`; None without one (or 0)."""
        if not self.global_batch_size:
            return None
        if self.gradient_accumulation_steps != 1:
            raise ValueError("Give --global_batch_size or --gradient_accumulation_steps, not both: the global batch "
                             "sets the accumulation steps for the number of processes.")
        split = split_global_batch(self.global_batch_size, world_size(), self.per_device_train_batch_size)
        self.per_device_train_batch_size, self.gradient_accumulation_steps = split.per_device, split.accumulation
        return split

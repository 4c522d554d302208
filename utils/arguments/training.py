"""transformers' TrainingArguments with this project's defaults and checks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments as HfTrainingArguments


@dataclass
class TrainingArguments(HfTrainingArguments):
    """transformers' TrainingArguments with these changes: `overwrite_output_dir`, which transformers 5 dropped, is
    back (the original rule: a non-empty output dir is an error unless overwriting or resuming);
    `remove_unused_columns` defaults to False (the original scripts always passed that); without accelerators,
    memory is not pinned and a multi-process launch (torchrun) turns on `use_cpu`, which CPU distributed runs
    need."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into a non-empty output dir instead of resuming from its checkpoint."}
    )
    # The collator needs the `image` column, which the model's forward does not take.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False (images are decoded late)."})

    def __post_init__(self) -> None:
        if self.remove_unused_columns:
            raise ValueError("--remove_unused_columns must be False: the transforms read the `image` column.")
        if self.dataloader_persistent_workers:
            # Workers would keep the epoch they started with, and so repeat the first epoch's augmentations.
            raise ValueError("--dataloader_persistent_workers is not supported (per-epoch augmentation seeds).")
        if not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for; torch warns at every epoch otherwise
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # Without use_cpu, accelerate starts the process group but not distributed mode on a CPU-only
                # machine: each rank evaluates its shard and nothing is gathered.
                self.use_cpu = True
        super().__post_init__()

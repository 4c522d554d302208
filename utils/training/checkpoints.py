"""Where a training run starts, and the rule that a rerun never hands back an old model unnoticed.

- `--overwrite_output_dir True` (the base and stage-2 presets, as the original scripts): start over.
- An output dir holding checkpoints of an interrupted run of the same settings: resume from the last one (as the
  original's `--overwrite_output_dir False`), ending exactly like an uninterrupted run.
- An output dir holding a finished run, or checkpoints of other settings: stop before training and say so.
- A non-empty output dir without checkpoints: stop before training.
An explicit `--resume_from_checkpoint` is taken as given.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig
from transformers.trainer_utils import get_last_checkpoint

from utils.arguments import TrainingArguments

logger = logging.getLogger(__name__)

# Configuration fields that make two runs different models (a checkpoint of other values is not resumed).
RUN_FIELDS = ("model_type", "backbone", "highway_type", "num_early_exits", "position_exits", "train_strategy",
              "loss_coefficient", "homo_coefficient", "hete_coefficient", "freeze_backbone", "num_labels")


def run_differences(checkpoint: str | Path, config: PretrainedConfig,
                    training_args: TrainingArguments) -> dict[str, tuple[Any, Any]]:
    """{field: (the checkpoint's value, this run's)} for the settings a resumed run must share with the checkpoint."""
    saved = json.loads((Path(checkpoint) / "config.json").read_text())
    ours = config.to_dict()
    ours["num_labels"], saved["num_labels"] = config.num_labels, len(saved.get("id2label") or {}) or None
    differences = {name: (saved.get(name), ours.get(name)) for name in RUN_FIELDS if saved.get(name) != ours.get(name)}
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    for name, value in (("train_batch_size", training_args.train_batch_size),
                        ("num_train_epochs", training_args.num_train_epochs)):
        if name in state and state[name] != value and not (name == "num_train_epochs" and training_args.max_steps > 0):
            differences[name] = (state[name], value)
    return differences


def resume_checkpoint(training_args: TrainingArguments, config: PretrainedConfig) -> str | bool | None:
    """The checkpoint to resume training from, or None to start fresh (see the module docstring).

    Raises:
        ValueError: the output dir holds a finished run, checkpoints of other settings, or other files.
    """
    explicit = training_args.resume_from_checkpoint
    if explicit is not None and str(explicit).lower() in ("true", "false"):
        explicit = str(explicit).lower() == "true" or None
    output_dir = training_args.output_dir
    if not training_args.do_train or training_args.overwrite_output_dir or not os.path.isdir(output_dir):
        return explicit
    last = get_last_checkpoint(output_dir)
    if last is None and os.listdir(output_dir):
        raise ValueError(
            f"Output directory ({output_dir}) already exists and is not empty, and holds no checkpoint to resume "
            f"from. Use --overwrite_output_dir to train into it anyway, or choose another --output_dir."
        )
    if last is None or explicit is not None:
        return explicit
    differences = run_differences(last, config, training_args)
    if differences:
        raise ValueError(
            f"Output directory ({output_dir}) holds checkpoints of another run ({last}; its settings differ: "
            + ", ".join(f"{name} {old!r} there, {new!r} now" for name, (old, new) in differences.items())
            + "). Use another --output_dir, or --overwrite_output_dir True to train from scratch into it."
        )
    state = json.loads((Path(last) / "trainer_state.json").read_text())
    if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]:
        raise ValueError(
            f"Output directory ({output_dir}) holds a finished run ({last}: step {state['global_step']} of "
            f"{state['max_steps']}); resuming would hand it back without training. Evaluate it with --do_train False, "
            f"use another --output_dir, or --overwrite_output_dir True to train again."
        )
    logger.info("Checkpoint detected, resuming training at %s. To avoid this behaviour, change --output_dir "
                "or add --overwrite_output_dir to train from scratch.", last)
    return last

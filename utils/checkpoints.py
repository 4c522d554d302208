"""Where a training run starts: the original's rule for existing output directories and checkpoints."""

from __future__ import annotations

import logging
import os

from transformers.trainer_utils import get_last_checkpoint

from .arguments import TrainingArguments

logger = logging.getLogger(__name__)


def resume_checkpoint(training_args: TrainingArguments) -> str | bool | None:
    """The checkpoint to resume training from, or None to start fresh.

    An explicit --resume_from_checkpoint wins ("True" means the output dir's last one). Otherwise, as the original:
    an output dir holding checkpoints resumes from the last one; a non-empty one without checkpoints is an error
    unless --overwrite_output_dir.
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
    if last is not None and explicit is None:
        logger.info("Checkpoint detected, resuming training at %s. To avoid this behaviour, change --output_dir "
                    "or add --overwrite_output_dir to train from scratch.", last)
        return last
    return explicit

"""Where a training run starts, and the rule that a rerun never hands back an old model unnoticed.

- `--overwrite_output_dir True` (the base and stage-2 presets, as the original scripts): start over; checkpoints of
  an earlier run in the output dir are removed first (a warning names them), so that none can be mistaken for this
  run's.
- An output dir holding checkpoints of an interrupted run of the same settings: resume from the last one (as the
  original's `--overwrite_output_dir False`), ending exactly like an uninterrupted run.
- An output dir holding a finished run, or checkpoints of other settings: stop before training and say so.
- A non-empty output dir without checkpoints: stop before training.
An explicit `--resume_from_checkpoint` is taken as given.

After a failure, torchrun restarts the processes (`--max_restarts`, MAX_RESTARTS in the launchers) with
TORCHELASTIC_RESTART_COUNT > 0 in one process at least: whatever the presets say, the restarted run resumes from its
last complete checkpoint, which is this run's own (earlier runs' were removed or refused when it started); a
checkpoint cut short by the failure is skipped with a warning, and left in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

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


def restart_count(training_args: TrainingArguments) -> int:
    """How often torchrun has restarted this run's processes after a failure (0 on the first attempt), the same in
    every process: on several nodes, the agent of a node whose processes did not fail restarts them to form the new
    group without counting a restart, so the group takes its largest count."""
    count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        largest = torch.tensor(count, device=training_args.device)
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
        count = int(largest)
    return count


def is_complete(checkpoint: Path, processes: int) -> bool:
    """Whether a checkpoint was written to its end: the Trainer writes `trainer_state.json` after the weights,
    optimizer and scheduler, and every process writes its own RNG state."""
    rng_files = ["rng_state.pth"] if processes == 1 else [f"rng_state_{rank}.pth" for rank in range(processes)]
    return all((checkpoint / name).is_file() for name in ["trainer_state.json", *rng_files])


def checkpoints_of(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders of an output dir, the latest step first."""
    folders = [path for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
               if path.is_dir() and path.name.split("-")[-1].isdigit()]
    return sorted(folders, key=lambda path: int(path.name.split("-")[-1]), reverse=True)


def last_complete_checkpoint(output_dir: str | Path, processes: int) -> str | None:
    """The latest checkpoint written to its end; incomplete ones (a failure while saving) are skipped and kept."""
    for checkpoint in checkpoints_of(output_dir):
        if is_complete(checkpoint, processes):
            return str(checkpoint)
        logger.warning("Skipping %s: it was not written to its end (a failure while saving); it is left in place.",
                       checkpoint)
    return None


def remove_earlier_checkpoints(training_args: TrainingArguments) -> None:
    """Before a run that starts over: remove the checkpoint folders an earlier run left in the output dir (on the
    main process), so that a restart resumes from this run's checkpoints and rotation keeps them."""
    stale = checkpoints_of(training_args.output_dir)
    if stale and training_args.should_save:
        logger.warning("--overwrite_output_dir: removing the checkpoints of an earlier run in %s: %s.",
                       training_args.output_dir, ", ".join(path.name for path in stale))
        for path in stale:
            shutil.rmtree(path)


def resume_checkpoint(training_args: TrainingArguments, config: PretrainedConfig) -> str | bool | None:
    """The checkpoint to resume training from, or None to start fresh (see the module docstring).

    Raises:
        ValueError: the output dir holds a finished run, checkpoints of other settings, or other files.
    """
    explicit = training_args.resume_from_checkpoint
    if explicit is not None and str(explicit).lower() in ("true", "false"):
        explicit = str(explicit).lower() == "true" or None
    if not training_args.do_train:
        return explicit
    restarts = restart_count(training_args)  # a collective: every process asks, before any early return
    output_dir = training_args.output_dir
    if not os.path.isdir(output_dir):
        return explicit
    if restarts > 0:
        last = last_complete_checkpoint(output_dir, training_args.world_size)
        logger.warning("Restart %d of this run after a failure: %s.", restarts,
                       f"resuming from {last}" if last else "no checkpoint was written yet, starting over")
        return last or explicit
    if training_args.overwrite_output_dir:
        if explicit is None:
            remove_earlier_checkpoints(training_args)
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

"""Where a training run starts: an interrupted run goes on, and a rerun never hands back an old model unnoticed.

The output dir's last complete checkpoint (`last_complete_checkpoint`: one a failure cut short is skipped, with a
warning, and left in place; `utils.training.checkpoint_saving` makes new ones appear only once complete) decides:
- checkpoints of the same settings, short of the run's last step: the run was interrupted (killed, timed out,
  requeued); it resumes from that checkpoint when the same command starts again, whatever --overwrite_output_dir
  says, and ends exactly like an uninterrupted run;
- a finished run (its last checkpoint at max_steps): started over with `--overwrite_output_dir True` (the base and
  stage-2 presets, as the original scripts), its checkpoints removed first (a warning names them); without it, the
  run stops before training and says so. In a requeued SLURM job (SLURM_RESTART_COUNT > 0) it is resumed instead,
  training no further step: the run finished while the job was being stopped;
- checkpoints of other settings (`run_differences`): the run stops before training, naming the fix (another
  --output_dir, or deleting them);
- no checkpoint: start fresh; a non-empty output dir without any checkpoint is refused unless
  --overwrite_output_dir.
An explicit `--resume_from_checkpoint` is taken as given.

After a failure, torchrun restarts the processes (`--max_restarts`, MAX_RESTARTS in the launchers) with
TORCHELASTIC_RESTART_COUNT > 0 in one process at least: the restarted run resumes from its last complete
checkpoint, which is this run's own (earlier runs' were removed or refused when it started).
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
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from utils.arguments import TrainingArguments
from utils.training.checkpoint_saving import staging_folders

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
    main process, once every process has looked at them), so that a restart resumes from this run's checkpoints and
    rotation keeps them."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    stale = checkpoints_of(training_args.output_dir)
    if stale and training_args.should_save:
        logger.warning("--overwrite_output_dir: removing the checkpoints of an earlier run in %s: %s.",
                       training_args.output_dir, ", ".join(path.name for path in stale))
        for path in stale:
            shutil.rmtree(path)


def resume_checkpoint(training_args: TrainingArguments, config: PretrainedConfig) -> str | bool | None:
    """The checkpoint to resume training from, or None to start fresh (see the module docstring).

    Raises:
        ValueError: the output dir holds checkpoints of other settings, a finished run (without
            --overwrite_output_dir), or other files only.
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
    last = last_complete_checkpoint(output_dir, training_args.world_size)
    if restarts > 0:
        logger.warning("Restart %d of this run after a failure: %s.", restarts,
                       f"resuming from {last}" if last else "no checkpoint was written yet, starting over")
        return last or explicit
    if explicit is not None:
        return explicit
    if last is None:
        return start_without_checkpoint(training_args)
    check_same_run(last, config, training_args)
    state = json.loads((Path(last) / "trainer_state.json").read_text())
    if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]:
        return start_after_finished_run(training_args, last, state)
    logger.warning("Resuming the interrupted run in %s from %s (the same command started it; a finished run is "
                   "started over, and other settings are refused).", output_dir, last)
    return last


def start_without_checkpoint(training_args: TrainingArguments) -> None:
    """Start fresh in an output dir without a complete checkpoint: one holding neither checkpoints nor checkpoints
    being written (other files only) is refused unless --overwrite_output_dir; checkpoints a failure cut short are
    removed when starting over."""
    output_dir = training_args.output_dir
    if training_args.overwrite_output_dir:
        remove_earlier_checkpoints(training_args)
    elif os.listdir(output_dir) and not checkpoints_of(output_dir) and not staging_folders(output_dir):
        raise ValueError(
            f"Output directory ({output_dir}) already exists and is not empty, and holds no checkpoint to resume "
            f"from. Use --overwrite_output_dir to train into it anyway, or choose another --output_dir."
        )
    return None


def check_same_run(last: str, config: PretrainedConfig, training_args: TrainingArguments) -> None:
    """Refuse to resume or replace checkpoints of other settings, whatever --overwrite_output_dir says."""
    differences = run_differences(last, config, training_args)
    if differences:
        raise ValueError(
            f"Output directory ({training_args.output_dir}) holds checkpoints of another run ({last}; its settings "
            "differ: " + ", ".join(f"{name} {old!r} there, {new!r} now" for name, (old, new) in differences.items())
            + "). Use another --output_dir, or delete those checkpoints to train into this one."
        )


def start_after_finished_run(training_args: TrainingArguments, last: str, state: dict[str, Any]) -> str | None:
    """A finished run in the output dir: started over with --overwrite_output_dir, else refused; in a requeued SLURM
    job (SLURM_RESTART_COUNT > 0), whose run finished while the job was being stopped, resumed from its last
    checkpoint, which trains no further step."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        logger.warning("Requeued job: the run in %s had finished (step %d of %d); resuming from %s trains no further "
                       "step.", training_args.output_dir, state["global_step"], state["max_steps"], last)
        return last
    if not training_args.overwrite_output_dir:
        raise ValueError(
            f"Output directory ({training_args.output_dir}) holds a finished run ({last}: step {state['global_step']}"
            f" of {state['max_steps']}); resuming would hand it back without training. Evaluate it with --do_train "
            f"False, use another --output_dir, or --overwrite_output_dir True to train again."
        )
    logger.warning("The run in %s finished (step %d of %d): starting over (--overwrite_output_dir).",
                   training_args.output_dir, state["global_step"], state["max_steps"])
    remove_earlier_checkpoints(training_args)
    return None

"""Checkpoints that appear only once complete.

The Trainer writes a checkpoint file by file; a job killed while it writes would leave a `checkpoint-<step>` folder
that a later run could take for a whole one. `StagedCheckpointSaving` makes every process write the checkpoint into
a staging folder, `partial-checkpoint-<step>/checkpoint-<step>` (a name neither transformers' `get_last_checkpoint`
nor `checkpoints_of` takes for a checkpoint), and once every process has finished, the main process renames it to
`checkpoint-<step>`. A staging folder left by a killed job is removed, with a warning, at the next save.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

logger = logging.getLogger(__name__)

STAGING_PREFIX = "partial-"


def staging_folders(run_dir: str | Path) -> list[Path]:
    """The staging folders of checkpoints being written (or left by a killed job) in `run_dir`."""
    return sorted(Path(run_dir).glob(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*"))


def remove_stale_staging(run_dir: str | Path) -> None:
    """Remove the staging folders a killed job left in `run_dir`, with a warning naming them."""
    stale = staging_folders(run_dir)
    if stale:
        logger.warning("Removing checkpoint(s) an interrupted save left unfinished in %s: %s.", run_dir,
                       ", ".join(path.name for path in stale))
    for path in stale:
        shutil.rmtree(path)


class StagedCheckpointSaving:
    """Trainer mixin: a checkpoint folder appears only once every process has written all of it (see the module
    docstring). The Trainer's own `_save_checkpoint` does the writing, into the staging folder; rotation and the
    best checkpoint's path then refer to the final folder."""

    _staging_dir: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        """As `Trainer._get_output_dir`, but the staging folder while a checkpoint is being written."""
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Write the checkpoint into its staging folder, then rename it to `checkpoint-<step>` (main process), and
        rotate the checkpoints as the Trainer does."""
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:
            remove_stale_staging(run_dir)
        self.accelerator.wait_for_everyone()  # no process writes into a folder being removed
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        final = os.path.join(run_dir, name)
        self._point_best_checkpoint_at(run_dir, os.path.join(staging, name))
        self.accelerator.wait_for_everyone()  # every process has written its part
        if self.args.should_save:
            if os.path.isdir(final):
                logger.warning("Replacing %s by the checkpoint of the same step just written.", final)
                shutil.rmtree(final)
            os.rename(os.path.join(staging, name), final)
            os.rmdir(staging)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()  # the checkpoint is in place before any process reads it

    def _point_best_checkpoint_at(self, run_dir: str, written: str) -> None:
        """Make `state.best_model_checkpoint` name the final folder of the best step (the Trainer only sees the
        staging folder), in the state and in the checkpoint's `trainer_state.json`."""
        best_step = self.state.best_global_step
        if not best_step or best_step != self.state.global_step:
            return
        self.state.best_model_checkpoint = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
        if self.args.should_save:
            self.state.save_to_json(os.path.join(written, "trainer_state.json"))

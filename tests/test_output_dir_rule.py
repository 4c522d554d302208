"""A rerun never hands back an old model unnoticed: a finished run in the output dir stops the run before training
unless --overwrite_output_dir starts it over, and checkpoints of other settings stop it whatever that flag says (an
interrupted run of the same settings is resumed: tests/test_pipeline_resume.py, tests/test_requeue.py); and the
private Trainer methods the ExitTrainer overrides are pinned."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
from pipeline_helpers import read_json, run_args, stage1_args, write_tiny_config
from transformers import Trainer

import run_classification
from utils.training.checkpoint_saving import StagedCheckpointSaving
from utils.training.trainer import ExitTrainer

CHECKPOINTED = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "max_train_samples": 64, "do_eval": False}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rule")
    run_classification.main(run_args(root / "base", config_name=write_tiny_config(root), do_eval=False))
    return root / "base"


def test_a_finished_run_is_not_handed_back(tmp_path: Path, base: Path) -> None:
    output = tmp_path / "stage1"
    run_classification.main(stage1_args(output, base, **CHECKPOINTED))
    with pytest.raises(ValueError, match="holds a finished run .*step 4 of 4.*--overwrite_output_dir True"):
        run_classification.main(stage1_args(output, base, **CHECKPOINTED))
    # Starting over is one flag away, and evaluating it needs none.
    run_classification.main(stage1_args(output, base, **CHECKPOINTED, overwrite_output_dir=True))
    metrics = run_classification.main(run_args(tmp_path / "eval", model_name_or_path=str(output), do_train=False))
    assert metrics["eval_samples"] == 45


def test_a_requeued_job_whose_run_had_finished_trains_no_further(tmp_path: Path, base: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A job stopped while its run was finishing is requeued (SLURM_RESTART_COUNT 1): the finished run is resumed
    from its last checkpoint, no step trained, instead of started over as --overwrite_output_dir says otherwise."""
    output = tmp_path / "stage1"
    run_classification.main(stage1_args(output, base, **CHECKPOINTED, overwrite_output_dir=True))
    shutil.rmtree(output / "checkpoint-2")  # a run started over would write it again
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run_classification.main(stage1_args(output, base, **CHECKPOINTED, overwrite_output_dir=True))
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-4"]
    assert read_json(output / "trainer_state.json")["global_step"] == 4


@pytest.mark.parametrize("change, message", [
    ({"train_strategy": "weighted"}, "train_strategy 'alternating_weighted' there, 'weighted' now"),
    ({"train_strategy": "weighted", "overwrite_output_dir": True}, "train_strategy 'alternating_weighted' there"),
    ({"num_early_exits": 2}, "num_early_exits 3 there, 2 now"),
    ({"per_device_train_batch_size": 8}, "train_batch_size 16 there, 8 now"),
])
def test_checkpoints_of_other_settings_are_not_resumed(tmp_path: Path, base: Path, change, message) -> None:
    output = tmp_path / "stage1"
    run_classification.main(stage1_args(output, base, **{**CHECKPOINTED, "max_steps": 3}))
    (output / "checkpoint-3").rename(output / "checkpoint-1")  # as if the run had been killed after step 1
    with pytest.raises(ValueError, match=f"holds checkpoints of another run.*{message}.*Use another --output_dir, "
                                         "or delete those checkpoints"):
        run_classification.main({**stage1_args(output, base, **{**CHECKPOINTED, "max_steps": 3}), **change})


def test_the_private_trainer_methods_the_exit_trainer_overrides_still_exist() -> None:
    """ExitTrainer reloads checkpoints through from_pretrained by overriding two private Trainer methods (Trainer has
    no public hook for it). If transformers renames them, the overrides would silently stop running; this fails."""
    expected = {"_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"], "_load_best_model": ["self"]}
    for name, parameters in expected.items():
        assert name in Trainer.__dict__ and name in ExitTrainer.__dict__, name
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == parameters, name
    train_source = inspect.getsource(Trainer)
    assert "self._load_from_checkpoint(resume_from_checkpoint" in train_source
    assert "self._load_best_model()" in train_source


def test_the_private_trainer_methods_of_staged_checkpoints_still_exist() -> None:
    """Checkpoints are written into a staging folder by overriding `_save_checkpoint` and `_get_output_dir`, which
    must still be where the Trainer saves a checkpoint and finds its folder, and where rotation runs."""
    expected = {"_save_checkpoint": ["self", "model", "trial"], "_get_output_dir": ["self", "trial"]}
    for name, parameters in expected.items():
        assert name in Trainer.__dict__ and getattr(ExitTrainer, name) is getattr(StagedCheckpointSaving, name), name
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == parameters, name
    save_source = inspect.getsource(Trainer._save_checkpoint)
    assert "run_dir = self._get_output_dir(trial=trial)" in save_source
    assert "os.path.join(run_dir, checkpoint_folder)" in save_source and "rotate_checkpoints(" in save_source
    assert "self._save_checkpoint(model, trial)" in inspect.getsource(Trainer)

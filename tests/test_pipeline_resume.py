"""A run that dies mid-training restarts from its last checkpoint and ends exactly like an uninterrupted run, whether
its presets keep an interrupted run (--overwrite_output_dir False) or start a finished one over (True)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pipeline_helpers import read_json, run_args, stage1_args, write_tiny_config
from safetensors.torch import load_file

import run_classification
from utils.training.trainer import ExitTrainer


class SimulatedKill(Exception):
    """Stands for the process dying (SIGKILL, pre-emption) in the middle of a training step."""


def kill_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the `step`-th training step (1-based) raise, after the earlier steps and their checkpoints."""
    original = ExitTrainer.training_step
    calls = {"count": 0}

    def training_step(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == step:
            raise SimulatedKill
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ExitTrainer, "training_step", training_step)


@pytest.mark.parametrize("how, workers, overwrite", [("detected in the output dir", 0, False),
                                                     ("--resume_from_checkpoint", 0, False),
                                                     ("detected in the output dir", 2, True)])
def test_killed_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str,
                                               workers: int, overwrite: bool) -> None:
    """With 2 persistent loader workers too: they keep their copy of the dataset across the epoch boundary at step 4,
    and still crop and flip as the uninterrupted run does; that run has --overwrite_output_dir True (as the base and
    stage-2 presets), and the same command resumes the interrupted run all the same: only a finished run is started
    over."""
    base = tmp_path / "base"
    run_classification.main(run_args(base, config_name=write_tiny_config(tmp_path), do_eval=False))
    # Stage 1 uses the alternating strategy, whose step counter must survive the restart too. 4 steps per epoch:
    # the kill at step 5 leaves checkpoint-3, in the middle of the first epoch.
    settings = {"max_steps": 7, "save_strategy": "steps", "save_steps": 3, "max_train_samples": 64,
                "dataloader_num_workers": workers, "dataloader_persistent_workers": workers > 0,
                "overwrite_output_dir": overwrite}

    straight = run_classification.main(stage1_args(tmp_path / "straight", base, **settings))

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        kill_at_step(patch, 5)
        with pytest.raises(SimulatedKill):
            run_classification.main(stage1_args(interrupted, base, **settings))
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == ["checkpoint-3"]
    if how == "--resume_from_checkpoint":
        settings["resume_from_checkpoint"] = str(interrupted / "checkpoint-3")
    resumed = run_classification.main(stage1_args(interrupted, base, **settings))

    assert read_json(interrupted / "trainer_state.json")["global_step"] == 7
    for key in straight:
        if key.startswith("eval_") and "runtime" not in key and "per_second" not in key:
            assert resumed[key] == straight[key], key
    weights = load_file(tmp_path / "straight" / "model.safetensors")
    resumed_weights = load_file(interrupted / "model.safetensors")
    assert weights.keys() == resumed_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name


def test_best_checkpoint_is_reloaded_at_the_end(tmp_path: Path) -> None:
    output = tmp_path / "run"
    run_classification.main(run_args(
        output, config_name=write_tiny_config(tmp_path), max_steps=6, eval_strategy="steps", eval_steps=2,
        save_strategy="steps", save_steps=2, load_best_model_at_end=True, metric_for_best_model="loss",
    ))
    # With this seed the eval loss rises over the 6 steps, so the best checkpoint is an early one.
    best = read_json(output / "trainer_state.json")["best_model_checkpoint"]
    assert best is not None and not best.endswith("checkpoint-6")
    final, saved = load_file(output / "model.safetensors"), load_file(Path(best) / "model.safetensors")
    for name, tensor in saved.items():
        assert torch.equal(tensor, final[name]), name

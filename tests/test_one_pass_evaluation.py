"""The Trainer's evaluation takes every number from one model call per batch, and the calibration sees the logits
the evaluation sees.

- With `every_exit_accuracy`, one call computes every exit and the early exit is decided from those logits: the
  exit layers, logits and metrics equal those of the per-sample early-exit pass, for every criterion, on DeiT and
  Swin.
- Under bf16 on the CPU the calibration runs in the evaluation's autocast: its logits are the evaluation's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from analysis_helpers import tiny_model, tiny_swin
from decision_helpers import spread_logits, thresholds_away_from_scores
from transformers import TrainingArguments

from models.criteria import EXIT_CRITERIA
from utils.analysis.flops import profile_flops
from utils.analysis.metrics import build_compute_metrics
from utils.analysis.report import ModelRuns, cache_logits
from utils.analysis.sweep import exit_decisions, exit_layers_of
from utils.data.image_dataset import collate_fn
from utils.data.transforms import Normalization
from utils.training.trainer import ExitTrainer

BATCH = 8


class Images(torch.utils.data.Dataset):
    """Random uint8 images with random labels, normalised as an `ImageDataset`'s are."""

    def __init__(self, count: int, size: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, 5, (count,), generator=generator)
        self.normalization = Normalization([0.5] * 3, [0.25] * 3)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixels[index], "labels": int(self.labels[index])}


class CallCounter:
    """Counts the model's calls and records their `early_exit` argument."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[bool | None] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs) -> None:
        self.calls.append(kwargs.get("early_exit"))


def evaluation_trainer(model: torch.nn.Module, data: Images, output_dir: Path, **arguments) -> ExitTrainer:
    spread_logits(model, data.normalization(data.pixels))
    profile = profile_flops(model)
    args = TrainingArguments(output_dir=str(output_dir), report_to="none", per_device_eval_batch_size=BATCH,
                             disable_tqdm=True, dataloader_pin_memory=False, **arguments)
    return ExitTrainer(model=model, args=args, data_collator=collate_fn, normalization=data.normalization,
                       compute_metrics=build_compute_metrics(model.config.num_blocks, profile,
                                                             model.config.exit_positions()))


@pytest.fixture(scope="module", params=["DeiT", "Swin"])
def evaluation(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[ExitTrainer, Images]:
    model, size = (tiny_model(), 16) if request.param == "DeiT" else (tiny_swin(), 32)
    data = Images(44, size)  # 5 full batches and one of 4
    return evaluation_trainer(model, data, tmp_path_factory.mktemp(request.param)), data


@pytest.mark.parametrize("criterion", sorted(EXIT_CRITERIA))
def test_one_pass_evaluation_equals_the_early_exit_pass(evaluation, criterion: str) -> None:
    trainer, data = evaluation
    model = trainer.model
    with torch.no_grad():
        every_exit = model(data.normalization(data.pixels), early_exit=False)
    exit_logits = torch.stack(every_exit.exit_logits)
    thresholds = thresholds_away_from_scores(criterion, exit_logits, torch.Generator().manual_seed(4), 1e-4)
    model.config.exit_strategy, model.config.threshold, model.config.patience = criterion, thresholds, 2
    counter = CallCounter(model)
    try:
        trainer.every_exit_accuracy = False
        early = trainer.predict(data)
        early_calls, counter.calls = counter.calls, []
        trainer.every_exit_accuracy = True
        one_pass = trainer.predict(data)
    finally:
        counter.handle.remove()
    batches = -(-len(data) // BATCH)
    assert early_calls == [None] * batches and counter.calls == [False] * batches
    logits, exit_layer, exit_predictions = one_pass.predictions
    assert exit_layer.tolist() == early.predictions[1].tolist()
    assert len(set(exit_layer.tolist())) >= 2, "the thresholds should send the images to several exits"
    np.testing.assert_allclose(logits, early.predictions[0], atol=1e-5, rtol=1e-5)
    expected_predictions = torch.cat([exit_logits, every_exit.final_logits[None]]).argmax(-1).T
    assert exit_predictions.tolist() == expected_predictions.tolist()
    # Each exit's accuracy and the final classifier's, from that one call.
    assert sum(key.startswith("test_accuracy_") for key in one_pass.metrics) == len(model.exits) + 1
    shared = {key for key in early.metrics if "runtime" not in key and "per_second" not in key}
    assert shared - {"test_model_preparation_time"} <= set(one_pass.metrics)
    for key in shared - {"test_loss", "test_model_preparation_time"}:
        assert one_pass.metrics[key] == pytest.approx(early.metrics[key], rel=1e-12), key
    assert one_pass.metrics["test_loss"] == pytest.approx(early.metrics["test_loss"], rel=1e-5)


def test_bf16_calibration_sees_the_evaluation_logits(tmp_path: Path) -> None:
    """bf16 on the CPU: the evaluation runs under accelerate's autocast, and so does every calibration pass
    (`ModelRuns.of_trainer`): the logits the cached decisions take are those the evaluation reports, and they are
    not the float32 ones."""
    data = Images(40, 16)
    trainer = evaluation_trainer(tiny_model(), data, tmp_path, bf16=True, use_cpu=True)
    model = trainer.model
    runs = ModelRuns.of_trainer(trainer)
    assert runs.rounding(model) == 8 * torch.finfo(torch.bfloat16).eps
    calibration = cache_logits(model, data, runs)
    float32 = cache_logits(model, data, ModelRuns(BATCH))
    assert not torch.allclose(calibration.final_logits, float32.final_logits, atol=1e-3)
    settings = model.config.exit_settings()
    logits, exit_index = exit_decisions(calibration, settings)
    trainer.every_exit_accuracy = False  # the evaluation's own per-sample early exit
    evaluated = trainer.predict(data)
    assert torch.equal(logits, torch.from_numpy(evaluated.predictions[0]))
    trainer.every_exit_accuracy = True
    one_pass = trainer.predict(data)
    assert torch.equal(logits, torch.from_numpy(one_pass.predictions[0]))
    assert one_pass.predictions[1].tolist() == exit_layers_of(calibration, exit_index).tolist()


def test_the_analysis_reads_with_the_training_loaders_workers(tmp_path: Path) -> None:
    """`ModelRuns.of_trainer` takes the loaders' workers and pinning from the Trainer's arguments; a loader worker
    gives the logits the main process gives, and memory is pinned only for a model on an accelerator."""
    data = Images(12, 16)
    trainer = evaluation_trainer(tiny_model(), data, tmp_path, dataloader_num_workers=1)
    runs = ModelRuns.of_trainer(trainer)
    assert (runs.batch_size, runs.num_workers, runs.pin_memory) == (BATCH, 1, False)
    pinning = ModelRuns(BATCH, num_workers=1, pin_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when memory is pinned with no accelerator
        in_worker = cache_logits(trainer.model, data, pinning)
    in_process = cache_logits(trainer.model, data, ModelRuns(BATCH))
    assert torch.equal(in_worker.exit_logits, in_process.exit_logits)
    assert torch.equal(in_worker.labels, data.labels)

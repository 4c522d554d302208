"""The Trainer subclass that evaluates with per-sample early exit, reports where samples left and how each exit does,
and logs each exit's loss terms during training."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir

from models.exiting import decide_from_logits
from utils.data.image_dataset import EpochCallback, ImageDataset
from utils.data.transforms import Normalization
from utils.training.alternation import StepAlternation
from utils.training.checkpoint_saving import StagedCheckpointSaving
from utils.training.exit_distribution import ExitDistributionCallback
from utils.training.loss_window import LossWindow
from utils.training.requeue import StopOnSignal

logger = logging.getLogger(__name__)


class ExitTrainer(StagedCheckpointSaving, Trainer):
    """`Trainer` with these changes.

    - an `ImageDataset` training set is told the epoch at every epoch start (`EpochCallback`), so its per-sample
    augmentation seeds change between epochs in every process and in persistent loader workers (accelerate
    forwards the epoch to the dataset only in single-process runs);
    - batches of uint8 images are normalised once they are on the device (`normalization`, the
    `utils.data.transforms.Normalization` of the images), so loader workers only decode, crop and flip;
    - the `alternating*` strategies alternate once per optimizer step (`utils.training.alternation`);
    - checkpoints and the best model are reloaded through `from_pretrained` (the exit layout comes with them);
    - `prediction_step` returns `(logits, exit_layer, exit_predictions)` as the predictions, from one model call
    per batch. Every sample leaves at its own exit whatever the eval batch size. Returning `exit_layer` beside the
    logits lets the unchanged evaluation loop gather it from every distributed rank (and drop the samples the
    distributed sampler duplicated), so the exit statistics cover the whole eval set; the original kept only rank
    0's exits. `exit_predictions` (B, exits + 1) is the class every exit and the final classifier give each sample
    (`every_exit_accuracy`, on by default): that call computes every exit, and the early-exit decisions are taken
    from its logits by the batched early exit's own rule (`models.exiting.decide_from_logits`). Off, the call is
    the cheaper per-sample early exit and the predictions are the first two. `compute_metrics`
    (`utils.analysis.metrics`) turns them into exit counts and per-exit accuracies; `ExitDistributionCallback`
    charts the counts;
    - at every logging step the logs also hold each loss term of the exits, its weight, the training images per
    second and the share of the time the loop waited for its next batch (`utils.training.loss_window`), from the
    terms the optimiser saw;
    - TensorBoard logs of an evaluation-only run go to the output directory too (as a training run's do).
    """

    def __init__(self, *args: Any, normalization: Normalization | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_on_signal = StopOnSignal()  # SIGUSR1/SIGTERM: save, stop, exit for a requeue
        self.add_callback(self.stop_on_signal)
        self.normalization = normalization
        if isinstance(self.train_dataset, ImageDataset):
            self.add_callback(EpochCallback(self.train_dataset))
        self.add_callback(StepAlternation())
        self.every_exit_accuracy = True
        self.loss_window: LossWindow | None = None
        if self.args.n_gpu > 1:
            logger.warning("Per-exit loss terms are not logged under torch's DataParallel (%d GPUs in one process); "
                           "launch one process per GPU (torchrun, as scripts/ do) to log them.", self.args.n_gpu)
        else:
            self.loss_window = LossWindow()
            self.add_callback(self.loss_window)
        tensorboard = next((callback for callback in self.callback_handler.callbacks
                            if isinstance(callback, TensorBoardCallback)), None)
        if tensorboard is not None and tensorboard.logging_dir is None:
            # transformers sets this at the start of training only; an evaluation-only run would write to ./runs.
            tensorboard.logging_dir = os.path.join(self.args.output_dir, default_logdir())
        self.add_callback(ExitDistributionCallback(tensorboard))

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """As `Trainer.compute_loss`; in training, the loss's terms also go to the logging window."""
        if not (model.training and self.loss_window is not None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, {**inputs, "output_loss_terms": True}, True, num_items_in_batch)
        self.loss_window.add(outputs.loss_terms, len(inputs["pixel_values"]), self.current_gradient_accumulation_steps)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """As `Trainer.log`; a training log (the one with `loss`) also gets the logging window's values."""
        if "loss" in logs and self.loss_window is not None:
            logs.update(self.loss_window.logs(lambda tensor: self.accelerator.reduce(tensor, reduction="sum"),
                                              self.accelerator.num_processes))
        super().log(logs, start_time)

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int,
                          device: torch.device) -> tuple[list, torch.Tensor | int | None]:
        """As `Trainer.get_batch_samples`; the time spent waiting for the batches goes to the logging window."""
        started = time.perf_counter()
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.loss_window is not None:
            self.loss_window.add_data_wait(time.perf_counter() - started)
        return batches

    def _prepare_inputs(self, inputs: dict[str, torch.Tensor | Any]) -> dict[str, torch.Tensor | Any]:
        inputs = super()._prepare_inputs(inputs)
        pixels = inputs.get("pixel_values")
        if isinstance(pixels, torch.Tensor) and not pixels.is_floating_point():
            if self.normalization is None:
                raise ValueError("The batch holds uint8 images but the Trainer has no `normalization` to turn them "
                                 "into model inputs; pass ExitTrainer(normalization=Normalization(mean, std)).")
            inputs["pixel_values"] = self.normalization(pixels)
        return inputs

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(target, PreTrainedModel) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        logger.info("Loading model weights from %s.", resume_from_checkpoint)
        loaded = type(target).from_pretrained(resume_from_checkpoint, config=target.config)
        target.load_state_dict(loaded.state_dict())

    def _load_best_model(self) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            super()._load_best_model()
            return
        logger.info("Loading best model from %s (score: %s).", self.state.best_model_checkpoint,
                    self.state.best_metric)
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...] | None, torch.Tensor | None]:
        """One model call per batch: every exit computed when `every_exit_accuracy` asks for each exit's
        predictions (the early exit is then decided from their logits), else the per-sample early exit."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad():
            if self.every_exit_accuracy and not prediction_loss_only:
                predictions = self._exit_predictions(model, inputs)
                loss = F.cross_entropy(predictions[0].float(), labels) if labels is not None else None
                return loss, predictions, labels
            outputs = model(**inputs)
            loss = outputs.loss.detach().mean() if outputs.loss is not None else None
            if prediction_loss_only:
                return loss, None, None
            return loss, (outputs.logits.detach(), outputs.exit_layer.detach()), labels

    def _exit_predictions(self, model: nn.Module,
                          inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits each sample leaves with (B, K), its exit layer (B,), the class every exit and then the final
        classifier give it (B, exits + 1)), from one pass with every exit computed. The decisions are those of the
        per-sample early exit on the same logits (`models.exiting.decide_from_logits`)."""
        config = self.accelerator.unwrap_model(model).config
        every_exit = model(**{name: value for name, value in inputs.items() if name != "labels"}, early_exit=False)
        decisions = decide_from_logits(config.exit_settings(), every_exit.exit_logits, every_exit.final_logits,
                                       config.exit_positions(), config.num_blocks)
        classifiers = [*every_exit.exit_logits, every_exit.final_logits]
        return decisions.logits, decisions.exit_layer, torch.stack([logits.argmax(-1) for logits in classifiers], 1)

"""The Trainer subclass that evaluates with per-sample early exit, reports where samples left and how each exit does,
and logs each exit's loss terms during training."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir

from utils.data.image_dataset import EpochCallback, ImageDataset
from utils.data.transforms import Normalization
from utils.training.exit_distribution import ExitDistributionCallback
from utils.training.loss_window import LossWindow

logger = logging.getLogger(__name__)


class ExitTrainer(Trainer):
    """`Trainer` with these changes.

    - an `ImageDataset` training set is told the epoch at every epoch start (`EpochCallback`), so its per-sample
    augmentation seeds change between epochs in every process and in persistent loader workers (accelerate
    forwards the epoch to the dataset only in single-process runs);
    - batches of uint8 images are normalised once they are on the device (`normalization`, the
    `utils.data.transforms.Normalization` of the images), so loader workers only decode, crop and flip;
    - checkpoints and the best model are reloaded through `from_pretrained` (the exit layout comes with them);
    - `prediction_step` returns `(logits, exit_layer, exit_predictions)` as the predictions. The model runs in eval
    mode, so every sample leaves at its own exit whatever the eval batch size. Returning `exit_layer` beside the
    logits lets the unchanged evaluation loop gather it from every distributed rank (and drop the samples the
    distributed sampler duplicated), so the exit statistics cover the whole eval set; the original kept only rank
    0's exits. `exit_predictions` (B, exits + 1) is the class every exit and the final classifier give each sample,
    from one more pass with every exit computed (`every_exit_accuracy`, on by default; off, the predictions are
    the first two). `compute_metrics` (`utils.analysis.metrics`) turns them into exit counts and per-exit accuracies;
    `ExitDistributionCallback` charts the counts;
    - at every logging step the logs also hold each loss term of the exits, its weight and the training images per
    second (`utils.training.loss_window`), from the terms the optimiser saw;
    - TensorBoard logs of an evaluation-only run go to the output directory too (as a training run's do).
    """

    def __init__(self, *args: Any, normalization: Normalization | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.normalization = normalization
        if isinstance(self.train_dataset, ImageDataset):
            self.add_callback(EpochCallback(self.train_dataset))
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
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad():
            outputs = model(**inputs)
            loss = outputs.loss.detach().mean() if outputs.loss is not None else None
            if prediction_loss_only:
                return loss, None, None
            predictions = (outputs.logits.detach(), outputs.exit_layer.detach())
            if self.every_exit_accuracy:
                predictions += (self._exit_predictions(model, inputs, outputs),)
        return loss, predictions, labels

    def _exit_predictions(self, model: nn.Module, inputs: dict[str, Any], outputs: Any) -> torch.Tensor:
        """(B, exits + 1): the class every exit, then the final classifier, gives each sample."""
        if not self.accelerator.unwrap_model(model).config.num_exits:  # the final classifier answered already
            return outputs.logits.argmax(-1, keepdim=True)
        every_exit = model(**inputs, early_exit=False)
        classifiers = [*every_exit.exit_logits, every_exit.final_logits]
        return torch.stack([logits.argmax(-1) for logits in classifiers], dim=1)

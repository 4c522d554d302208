"""The Trainer subclass that evaluates with per-sample early exit and reports where samples left."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer

from utils.data.image_dataset import EpochCallback, ImageDataset
from utils.data.transforms import Normalization

logger = logging.getLogger(__name__)


class ExitTrainer(Trainer):
    """`Trainer` with these changes.

    - an `ImageDataset` training set is told the epoch at every epoch start (`EpochCallback`), so its per-sample
    augmentation seeds change between epochs in every process and in persistent loader workers (accelerate
    forwards the epoch to the dataset only in single-process runs);
    - batches of uint8 images are normalised once they are on the device (`normalization`, the
    `utils.data.transforms.Normalization` of the images), so loader workers only decode, crop and flip;
    - checkpoints and the best model are reloaded through `from_pretrained` (the exit layout comes with them);
    - `prediction_step` returns `(logits, exit_layer)` as the predictions. The model runs in eval mode, so every
    sample leaves at its own exit whatever the eval batch size. Returning `exit_layer` beside the logits lets the
    unchanged evaluation loop gather it from every distributed rank (and drop the samples the distributed sampler
    duplicated), so the exit statistics cover the whole eval set; the original kept only rank 0's exits.
    `compute_metrics` (see `utils.metrics`) turns them into exit counts.
    """

    def __init__(self, *args: Any, normalization: Normalization | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.normalization = normalization
        if isinstance(self.train_dataset, ImageDataset):
            self.add_callback(EpochCallback(self.train_dataset))

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
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad():
            outputs = model(**inputs)
        loss = outputs.loss.detach().mean() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        return loss, (outputs.logits.detach(), outputs.exit_layer.detach()), labels

"""The Trainer subclass that evaluates with per-sample early exit and reports where samples left."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer


class ExitTrainer(Trainer):
    """`Trainer` with two changes.

    - `prediction_step` returns `(logits, exit_layer)` as the predictions. The model runs in eval mode, so every sample leaves at its own exit whatever the eval batch size. Returning
    `exit_layer` beside the logits lets the unchanged evaluation loop gather it from every distributed rank (and
    drop the samples the distributed sampler duplicated), so the exit statistics cover the whole eval set; the
    original kept only rank 0's exits. `compute_metrics` (see `utils.metrics`) turns them into exit counts.
    """

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

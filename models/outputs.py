"""Output dataclass of the classifiers with exits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .loss_terms import LossTerm


@dataclass
class EarlyExitClassifierOutput(ModelOutput):
    """Output of a classifier with early exits.

    Attributes:
        loss: scalar training loss (or cross-entropy of `logits` in evaluation), when labels were given.
        logits: (B, K) logits each sample left the network with.
        exit_layer: (B,) int64, the 1-based block each sample left after; the number of blocks means the final
            classifier answered.
        exit_logits: one (B, K) tensor per exit in position order, when every exit was computed.
        exit_features: per exit, the feature its head hands to self-distillation, when every exit was computed.
        final_logits: (B, K) logits of the final classifier, when every exit was computed.
        loss_terms: in training, the named terms `loss` is the weighted sum of, detached (`models.loss_terms`).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    exit_layer: torch.Tensor | None = None
    exit_logits: tuple[torch.Tensor, ...] | None = None
    exit_features: tuple[torch.Tensor, ...] | None = None
    final_logits: torch.Tensor | None = None
    loss_terms: dict[str, LossTerm] | None = None

"""Forward pass, losses and stage-2 freezing shared by every backbone with exits.

A model class mixes `HighwayMixin` into its `PreTrainedModel` and implements the `ExitingBackbone` methods
(`embed`, `run_layer`, `final_logits`, `num_layers`) plus `frozen_modules` and `teacher_tokens`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .exiting import ExitCriterion, run_early_exit
from .losses import STAGE1_LOSSES, STAGE2_LOSSES, ExitOutputs, LossSettings
from .outputs import HighwayClassifierOutput


class HighwayMixin:
    """Early-exit behaviour on top of a backbone adapter.

    - eval mode: per-sample early exit (`early_exit=None` or True), or every exit for the whole batch
      (`early_exit=False`);
    - training mode: every exit is computed and the configured strategy gives the loss; with a frozen backbone
      (stage 2) the backbone and final classifier run under no_grad, in eval mode, and only the heads learn.
    The alternation counter of `alternating*` strategies is the buffer `training_forwards`, saved with checkpoints so
    a resumed run alternates exactly like an uninterrupted one.
    """

    exits: nn.ModuleList
    # Stage-2 losses by `train_strategy`; a backbone whose heads hand out other features may swap in its own table.
    stage2_losses: dict = STAGE2_LOSSES

    def exit_after_layer(self) -> dict[int, int]:
        """0-based block index -> exit index."""
        return {position - 1: index for index, position in enumerate(self.config.exit_positions())}

    def frozen_modules(self) -> list[nn.Module]:
        """Backbone and final classifier(s): what stage 2 freezes."""
        raise NotImplementedError

    def teacher_tokens(self, hidden: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens of the last block's raw output and their grid (heterogeneous distillation target)."""
        raise NotImplementedError

    def apply_freezing(self) -> None:
        """Stage 2: stop gradients into the backbone and final classifier so no optimizer ever updates them."""
        frozen = self.config.frozen_backbone
        for module in self.frozen_modules():
            module.requires_grad_(not frozen)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As PreTrainedModel.from_pretrained; loading creates fresh parameters, so stage-2 freezing is re-applied."""
        model = super().from_pretrained(*args, **kwargs)
        model.apply_freezing()
        return model

    def train(self, mode: bool = True):
        """As nn.Module.train, but a frozen backbone stays in eval mode (no dropout or drop-path in the teacher)."""
        super().train(mode)
        if mode and self.config.frozen_backbone:
            for module in self.frozen_modules():
                module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                early_exit: bool | None = None) -> HighwayClassifierOutput:
        """Classify `pixel_values` (B, 3, H, W).

        Args:
            labels: (B,) class indices; gives `loss`.
            early_exit: None exits early in eval mode and computes everything in training mode; False computes
                every exit for the whole batch; True needs eval mode.
        """
        if early_exit is None:
            early_exit = not self.training
        if early_exit and self.training:
            raise ValueError("`early_exit=True` runs in evaluation mode only; call `model.eval()` first.")
        if early_exit:
            decisions = run_early_exit(self, pixel_values, ExitCriterion(self.config.exit_settings()))
            loss = F.cross_entropy(decisions.logits, labels) if labels is not None else None
            return HighwayClassifierOutput(loss=loss, logits=decisions.logits, exit_layer=decisions.exit_layer)
        outputs = self.run_all_exits(pixel_values)
        loss = None
        if labels is not None:
            loss = self.training_loss(outputs, labels) if self.training else F.cross_entropy(
                outputs.final_logits, labels)
        exit_layer = torch.full((pixel_values.shape[0],), self.num_layers(), dtype=torch.long,
                                device=outputs.final_logits.device)
        return HighwayClassifierOutput(loss=loss, logits=outputs.final_logits, exit_layer=exit_layer,
                                       exit_logits=tuple(outputs.exit_logits),
                                       exit_features=tuple(outputs.exit_features),
                                       final_logits=outputs.final_logits)

    def run_all_exits(self, pixel_values: torch.Tensor) -> ExitOutputs:
        """Run every block and every exit head on the whole batch."""
        frozen = self.training and self.config.frozen_backbone
        exit_after = self.exit_after_layer()
        exit_logits, exit_features = [], []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            hidden = self.embed(pixel_values)
        for index in range(self.num_layers()):
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                tapped, hidden = self.run_layer(index, hidden)
            if index in exit_after:
                logits, feature = self.exits[exit_after[index]](tapped)
                exit_logits.append(logits)
                exit_features.append(feature)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            final_logits = self.final_logits(hidden)
        tokens, grid = self.teacher_tokens(tapped)
        return ExitOutputs(exit_logits=exit_logits, exit_features=exit_features, final_logits=final_logits,
                           exit_layers=self.config.exit_positions(), num_layers=self.num_layers(),
                           head_types=self.config.head_types(), teacher_tokens=tokens, grid=grid)

    def training_loss(self, outputs: ExitOutputs, labels: torch.Tensor) -> torch.Tensor:
        """The configured strategy's loss; advances the alternation counter."""
        config = self.config
        step = int(self.training_forwards)
        self.training_forwards += 1
        if not outputs.exit_logits:
            return F.cross_entropy(outputs.final_logits, labels)
        settings = LossSettings(config.loss_coefficient, config.homo_coefficient, config.hete_coefficient)
        table = self.stage2_losses if config.frozen_backbone else STAGE1_LOSSES
        return table[config.train_strategy](outputs, labels, settings, step)

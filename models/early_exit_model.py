"""Forward pass, losses, stage-2 freezing and compilation shared by every backbone with exits.

A model class mixes `EarlyExitMixin` into its `PreTrainedModel` and implements the `ExitingBackbone` methods
(`embed`, `run_layer`, `final_logits`) plus `frozen_modules` and `teacher_tokens`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .exiting import SegmentRun, run_early_exit
from .loss_terms import LossTerms
from .losses import STAGE1_LOSSES, STAGE2_LOSSES, ExitOutputs, LossSettings
from .original_checkpoint import CONVERTER, convert_state_dict, find_original_checkpoint
from .outputs import EarlyExitClassifierOutput
from .segments import Segment, plan_segments, segment_runs
from .timm_checkpoint import config_fields_from_timm, load_timm_model, state_dict_from_timm

logger = logging.getLogger(__name__)
# Checkpoint tensors that hold exit heads, under this project's names or the original code's.
EXIT_HEAD_TENSOR = re.compile(r"(^|\.)(exits|highway)\.")


class EarlyExitMixin:
    """Early-exit behaviour on top of a backbone adapter.

    - eval mode: per-sample early exit (`early_exit=None` or True), or every exit for the whole batch
      (`early_exit=False`);
    - training mode: every exit is computed and the configured strategy gives the loss; with a frozen backbone
      (stage 2) the backbone and final classifier run under no_grad, in eval mode, and only the heads learn.
    The `alternating*` strategies train the final classifier alone when `alternation_phase` is 0 and the exits when
    it is 1. The phase is a Python int, so choosing the loss never reads the device. Each training forward flips it
    (the original's per-forward counter); the Trainer instead pins it to the optimizer step before every
    micro-batch (`utils.training.alternation`), so gradient accumulation and the process count leave the recipe
    unchanged and a resumed run keeps its phase.
    """

    exits: nn.ModuleList
    alternation_phase: int = 0

    def exit_after_layer(self) -> dict[int, int]:
        """0-based block index -> exit index."""
        return {position - 1: index for index, position in enumerate(self.config.exit_positions())}

    def frozen_modules(self) -> list[nn.Module]:
        """Backbone and final classifier(s): what stage 2 freezes."""
        raise NotImplementedError

    def teacher_tokens(self, hidden: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens of the last block's output and their grid (heterogeneous distillation target)."""
        raise NotImplementedError

    def apply_freezing(self) -> None:
        """Stage 2: stop gradients into the backbone and final classifier so no optimizer ever updates them."""
        frozen = self.config.frozen_backbone
        for module in self.frozen_modules():
            module.requires_grad_(not frozen)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """As PreTrainedModel.from_pretrained, plus:

        - a directory saved by the original LGViT code is recognised and converted on load (`from_original`);
        - a checkpoint whose exit heads this model cannot take stops with an error instead of starting fresh heads;
        - stage-2 freezing is re-applied (loading creates fresh parameters).
        """
        original = find_original_checkpoint(pretrained_model_name_or_path)
        if original is not None:
            model = cls.from_original(*original, **kwargs)
            logger.info("%s is a checkpoint of the original LGViT code: converted on load (%d exits at layers %s).",
                        pretrained_model_name_or_path, model.config.num_exits, model.config.exit_positions())
            return (model, {"missing_keys": [], "unexpected_keys": []}) if kwargs.get("output_loading_info") else model
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        lost_heads = [name for name in info["unexpected_keys"] if EXIT_HEAD_TENSOR.search(name)]
        if lost_heads:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds exit-head weights this model cannot map ({lost_heads[:3]}...); "
                f"they would be replaced by fresh heads. If it was saved by the original LGViT code, convert it with "
                f"`{CONVERTER}`; otherwise load it with the exit layout it was trained with."
            )
        model.apply_freezing()
        return (model, info) if wants_info else model

    @classmethod
    def from_original(cls, original_config: dict[str, Any], state_dict: dict[str, torch.Tensor],
                      config: Any = None, ignore_mismatched_sizes: bool = False, **kwargs: Any):
        """This model from a checkpoint of the original LGViT code (its config.json dict and state dict).

        Args:
            config: this project's configuration to use (e.g. with other labels); by default the original one,
                converted, with the early-exit fields given as keyword arguments.
            ignore_mismatched_sizes: start new tensors where the checkpoint's shapes differ (another class count).
            kwargs: configuration fields; download options of `from_pretrained` are ignored.
        """
        if not isinstance(config, cls.config_class):
            fields = {name: value for name, value in kwargs.items() if name in cls.config_class.__dataclass_fields__}
            config = cls.config_class.from_dict(original_config, **fields)
        model = cls(config)
        weights = convert_state_dict(state_dict, config)
        own = model.state_dict()
        mismatched = [name for name, tensor in weights.items() if name in own and tensor.shape != own[name].shape]
        if mismatched and not ignore_mismatched_sizes:
            raise ValueError(f"The checkpoint's {mismatched} have other shapes than the model's (another class "
                             "count?); pass ignore_mismatched_sizes=True to start them fresh.")
        for name in mismatched:
            logger.warning("Starting %s fresh: the checkpoint's shape %s differs from the model's %s.", name,
                           tuple(weights.pop(name).shape), tuple(own[name].shape))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or set(missing) - set(mismatched):
            raise ValueError(f"The original checkpoint does not match its configuration: missing {missing}, "
                             f"unexpected {unexpected}.")
        model.apply_freezing()
        return model

    @classmethod
    def from_timm(cls, model_or_name: nn.Module | str, **config_kwargs: Any):
        """This model with a timm model's backbone and classifier weights (`models.timm_checkpoint`).

        Args:
            model_or_name: a timm model object, or a timm model name created with its pretrained weights (this needs
                the HuggingFace Hub).
            config_kwargs: this project's configuration fields: the exit layout and settings (e.g.
                `highway_type="LGViT", num_early_exits=8`), or `num_labels` for a new classifier.
        """
        timm_model = load_timm_model(model_or_name)
        fields = config_fields_from_timm(timm_model)
        if fields.pop("model_type") != cls.config_class.model_type:
            other = "Swin" if "Swin" in type(timm_model).__name__ else "DeiT"
            raise ValueError(f"timm's {type(timm_model).__name__} does not map onto {cls.__name__}; use "
                             f"{other}HighwayForImageClassification.")
        model = cls(cls.config_class(**{**fields, **config_kwargs}))
        weights = state_dict_from_timm(timm_model)
        if model.config.num_labels != fields["num_labels"]:
            logger.info("New final classifier for %d classes (timm's has %d).", model.config.num_labels,
                        fields["num_labels"])
            weights = {name: tensor for name, tensor in weights.items() if "classifier." not in name}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        unmapped = [name for name in missing if not name.startswith(("exits.", "classifier.", "cls_classifier.",
                                                                     "distillation_classifier."))]
        if unexpected or unmapped:
            raise ValueError(f"timm weights do not map onto {cls.__name__}: missing {unmapped}, unexpected "
                             f"{unexpected}.")
        logger.info("Built %s from timm's %s (%d exits, new).", cls.__name__, type(timm_model).__name__,
                    model.config.num_exits)
        model.apply_freezing()
        return model

    def train(self, mode: bool = True):
        """As nn.Module.train, but a frozen backbone stays in eval mode (no dropout or drop-path in the teacher)."""
        super().train(mode)
        if mode and self.config.frozen_backbone:
            for module in self.frozen_modules():
                module.eval()
        return self

    def compile_exits(self, **compile_options: Any) -> None:
        """Compile every segment of the early-exit pass with `torch.compile` (`fullgraph=True`, so a graph break is
        an error), so later early-exit calls run compiled code while the per-sample decisions and the shrinking
        batch stay in eager code between segments (`models.segments`). Decisions equal eager's.

        Only the batch axis is dynamic (every other size is fixed by the model), which keeps compilation short:
        one graph per segment, plus one for a batch of one. `compile_options` go to `torch.compile`.
        """
        options = {"fullgraph": True, "dynamic": False, **compile_options}
        self._compiled_runs = [_batch_dynamic(torch.compile(run, **options))
                               for run in segment_runs(self, self.segments())]

    def segments(self) -> list[Segment]:
        """The segments of the early-exit pass (`models.segments.plan_segments`)."""
        return plan_segments(self.config.exit_positions(), self.config.num_blocks)

    def segment_runs(self) -> list[SegmentRun]:
        """The runs early exit uses: the compiled ones after `compile_exits`, else eager ones."""
        return getattr(self, "_compiled_runs", None) or segment_runs(self, self.segments())

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                early_exit: bool | None = None, output_loss_terms: bool = False) -> EarlyExitClassifierOutput:
        """Classify `pixel_values` (B, 3, H, W).

        Args:
            labels: (B,) class indices; gives `loss`.
            early_exit: None exits early in eval mode and computes everything in training mode; False computes
                every exit for the whole batch; True needs eval mode.
            output_loss_terms: in training with labels, also return the named terms `loss` is the weighted sum of
                (`loss_terms`; their weights are Python floats, which torch's DataParallel cannot gather).
        """
        if early_exit is None:
            early_exit = not self.training
        if early_exit and self.training:
            raise ValueError("`early_exit=True` runs in evaluation mode only; call `model.eval()` first.")
        config = self.config
        if early_exit:
            decisions = run_early_exit(self.segment_runs(), pixel_values, config.exit_settings(),
                                       config.exit_positions(), config.num_blocks)
            loss = F.cross_entropy(decisions.logits.float(), labels) if labels is not None else None
            return EarlyExitClassifierOutput(loss=loss, logits=decisions.logits, exit_layer=decisions.exit_layer)
        outputs = self.run_all_exits(pixel_values)
        loss, loss_terms = None, None
        if labels is not None and self.training:
            terms = self.training_loss(outputs, labels)
            loss, loss_terms = terms.total(), terms.detached() if output_loss_terms else None
        elif labels is not None:
            loss = F.cross_entropy(outputs.final_logits.float(), labels)
        exit_layer = torch.full((pixel_values.shape[0],), config.num_blocks, dtype=torch.long,
                                device=outputs.final_logits.device)
        return EarlyExitClassifierOutput(loss=loss, logits=outputs.final_logits, exit_layer=exit_layer,
                                         exit_logits=tuple(outputs.exit_logits),
                                         exit_features=tuple(outputs.exit_features),
                                         final_logits=outputs.final_logits, loss_terms=loss_terms)

    def run_all_exits(self, pixel_values: torch.Tensor) -> ExitOutputs:
        """Run every block and every exit head on the whole batch."""
        frozen = self.training and self.config.frozen_backbone
        exit_after = self.exit_after_layer()
        exit_logits, exit_features = [], []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            hidden = self.embed(pixel_values)
        for index in range(self.config.num_blocks):
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                tapped, hidden = self.run_layer(index, hidden)
            if index in exit_after:
                logits, feature = self.exits[exit_after[index]](tapped)
                exit_logits.append(logits)
                exit_features.append(feature)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            final_logits = self.final_logits(hidden)
            tokens, grid = self.teacher_tokens(tapped)
        return ExitOutputs(exit_logits=exit_logits, exit_features=exit_features,
                           feature_kinds=[head.feature_kind for head in self.exits], final_logits=final_logits,
                           exit_layers=self.config.exit_positions(), num_blocks=self.config.num_blocks,
                           head_specs=self.config.head_specs(), teacher_tokens=tokens, grid=grid)

    def training_loss(self, outputs: ExitOutputs, labels: torch.Tensor) -> LossTerms:
        """The configured strategy's loss as its named terms; an alternating strategy flips the alternation phase
        (the others never read it, so a compiled step of theirs needs one graph, not one per phase)."""
        config = self.config
        phase = 0
        if config.train_strategy.startswith("alternating") and not config.frozen_backbone:
            phase = self.alternation_phase
            self.alternation_phase = 1 - phase
        if not outputs.exit_logits:
            terms = LossTerms()
            terms.add(outputs.classifier_names()[-1], F.cross_entropy(outputs.final_logits.float(), labels), 1.0)
            return terms
        settings = LossSettings(config.loss_coefficient, config.homo_coefficient, config.hete_coefficient)
        table = STAGE2_LOSSES if config.frozen_backbone else STAGE1_LOSSES
        # Every term in float32, whatever precision the forward ran in: autocast would run the feature terms'
        # matrix products in half precision again.
        with torch.autocast(outputs.final_logits.device.type, enabled=False):
            return table[config.train_strategy](outputs.float(), labels, settings, phase)


def _batch_dynamic(compiled: SegmentRun) -> SegmentRun:
    """Mark the input's batch axis dynamic before every call of a compiled segment."""

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch._dynamo.maybe_mark_dynamic(inputs, 0)
        return compiled(inputs)

    return run

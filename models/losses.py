"""Training losses of the two LGViT stages (paper section 3.3; docs/original-code.md has the original's formulas).

Stage 1 (end to end): `normal`, `weighted`, `alternating`, `alternating_weighted`, `distillation`.
Stage 2 (backbone and final classifier frozen): `distillation` and `distillation_LGViT`.
A model picks its loss from `STAGE1_LOSSES` / `STAGE2_LOSSES` by `train_strategy`; every function takes an
`ExitOutputs` and returns the loss as named, weighted terms (`models.loss_terms`). Teachers (the final classifier's
logits, the deepest head of each group, the last block's tokens) are always detached, so a teacher is never pulled
toward its students.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .feature_distillation import heterogeneous_term, homogeneous_term
from .head_types import HeadSpec
from .loss_terms import LossTerms, classifier_names


@dataclass
class ExitOutputs:
    """Everything the losses read from one forward pass that computed every exit.

    Attributes:
        exit_logits: (B, K) per exit, in position order.
        exit_features: the feature each head hands to self-distillation, per exit.
        feature_kinds: the kind of each feature (`models.heads`: tokens, pooled or prefix).
        final_logits: (B, K) of the final classifier.
        exit_layers: 1-based layer of each exit.
        num_blocks: number of backbone blocks.
        head_specs: head type of each exit.
        teacher_tokens: the last block's patch tokens (B, P, C), the heterogeneous distillation target.
        grid: patch grid of `teacher_tokens`.
    """

    exit_logits: list[torch.Tensor]
    exit_features: list[torch.Tensor]
    feature_kinds: list[str]
    final_logits: torch.Tensor
    exit_layers: list[int]
    num_blocks: int
    head_specs: list[HeadSpec]
    teacher_tokens: torch.Tensor | None = None
    grid: tuple[int, int] | None = None

    def float(self) -> ExitOutputs:
        """The same outputs with every tensor in float32 (the losses are computed in float32 under autocast)."""
        return dataclasses.replace(
            self, exit_logits=[logits.float() for logits in self.exit_logits],
            exit_features=[feature.float() for feature in self.exit_features], final_logits=self.final_logits.float(),
            teacher_tokens=None if self.teacher_tokens is None else self.teacher_tokens.float())

    def classifier_names(self) -> list[str]:
        """Name of every exit, then of the final classifier (`models.loss_terms.classifier_names`)."""
        return classifier_names(self.exit_layers, self.num_blocks)


@dataclass
class LossSettings:
    """Loss weights: `loss_coefficient` is the prediction-distillation weight alpha, `homo`/`hete` the feature ones."""

    loss_coefficient: float = 0.3
    homo_coefficient: float = 0.01
    hete_coefficient: float = 0.01
    temperature: float = 2.0


# (outputs, labels, settings, alternation phase: 0 or 1, read by the alternating strategies only) -> terms
LossFunction = Callable[[ExitOutputs, torch.Tensor, LossSettings, int], LossTerms]


def prediction_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher || p_student) at temperature T, times T^2, divided by B*K (the original's normalisation)."""
    loss = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="sum", log_target=True)
    return loss * temperature**2 / student.numel()


def _add_exit_ces(terms: LossTerms, outputs: ExitOutputs, labels: torch.Tensor, weights: list[float]) -> None:
    """Every exit's cross-entropy, under its name, with its weight."""
    for name, logits, weight in zip(outputs.classifier_names(), outputs.exit_logits, weights):
        terms.add(name, F.cross_entropy(logits, labels), weight)


def _add_final_ce(terms: LossTerms, outputs: ExitOutputs, labels: torch.Tensor, weight: float) -> None:
    terms.add(outputs.classifier_names()[-1], F.cross_entropy(outputs.final_logits, labels), weight)


def _add_exit_kds(terms: LossTerms, outputs: ExitOutputs, settings: LossSettings, weight: float) -> None:
    """Prediction distillation of every exit from the final classifier's (detached) logits, as `<exit>_kd`."""
    teacher = outputs.final_logits.detach()
    for name, logits in zip(outputs.classifier_names(), outputs.exit_logits):
        terms.add(f"{name}_kd", prediction_distillation(logits, teacher, settings.temperature), weight)


def normal_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings, step: int) -> LossTerms:
    """Mean of every exit's and the final classifier's cross-entropy."""
    terms, weight = LossTerms(), 1 / (len(outputs.exit_logits) + 1)
    _add_exit_ces(terms, outputs, labels, [weight] * len(outputs.exit_logits))
    _add_final_ce(terms, outputs, labels, weight)
    return terms


def weighted_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings, step: int) -> LossTerms:
    """Cross-entropies weighted by the 1-based layer of their classifier (the final one weighs num_blocks).

    When every layer has an exit, the final classifier weighs 0, as the original leaves it out (its term keeps it in
    the graph, so distributed training sees no unused parameter).
    """
    with_final = len(outputs.exit_layers) != outputs.num_blocks
    total = sum(outputs.exit_layers) + (outputs.num_blocks if with_final else 0)
    terms = LossTerms()
    _add_exit_ces(terms, outputs, labels, [layer / total for layer in outputs.exit_layers])
    _add_final_ce(terms, outputs, labels, outputs.num_blocks / total if with_final else 0.0)
    return terms


def _alternate(exit_loss: LossFunction) -> LossFunction:
    """Phase 0 (even optimizer steps) trains the final classifier only; phase 1 uses `exit_loss`."""

    def loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings, phase: int) -> LossTerms:
        if phase % 2:
            return exit_loss(outputs, labels, settings, phase)
        terms = LossTerms()
        # The exits' terms weigh 0: they keep every head in the graph, so distributed training sees no unused
        # parameter, and the logs still show how the heads do on the steps that do not train them.
        _add_exit_ces(terms, outputs, labels, [0.0] * len(outputs.exit_logits))
        _add_final_ce(terms, outputs, labels, 1.0)
        return terms

    loss.__doc__ = f"Alternate between the final classifier's loss and `{exit_loss.__name__}`."
    return loss


def joint_distillation_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings,
                            step: int) -> LossTerms:
    """Stage 1 `distillation`: (1 - a) * normal loss + a * mean over exits of KD from the final logits."""
    alpha, exits = settings.loss_coefficient, len(outputs.exit_logits)
    terms = LossTerms()
    _add_exit_ces(terms, outputs, labels, [(1 - alpha) / (exits + 1)] * exits)
    _add_final_ce(terms, outputs, labels, (1 - alpha) / (exits + 1))
    _add_exit_kds(terms, outputs, settings, alpha / exits)
    return terms


def frozen_distillation_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings,
                             step: int) -> LossTerms:
    """Stage 2 `distillation`: exit cross-entropies weighted by (layer - 1), plus mean KD from the final logits.

    The (layer - 1) weights are the original's; if they are all zero (one exit at layer 1) the exits weigh equally.
    """
    alpha = settings.loss_coefficient
    weights = [layer - 1 for layer in outputs.exit_layers]
    if sum(weights) == 0:
        weights = [1] * len(weights)
    terms = LossTerms()
    _add_exit_ces(terms, outputs, labels, [(1 - alpha) * weight / sum(weights) for weight in weights])
    _add_exit_kds(terms, outputs, settings, alpha / len(weights))
    return terms


def lgvit_head_groups(head_specs: list[HeadSpec]) -> dict[str, list[int]]:
    """Indices of the local perception exits and of the global aggregation exits: {"local": [...], "global": [...]}."""
    groups: dict[str, list[int]] = {"local": [], "global": []}
    for index, spec in enumerate(head_specs):
        if spec.distillation_group is not None:
            groups[spec.distillation_group].append(index)
    return groups


def check_lgvit_distillation_layout(head_specs: list[HeadSpec]) -> None:
    """`distillation_LGViT` needs every exit to be a local perception or global aggregation head."""
    if not head_specs or any(spec.distillation_group is None for spec in head_specs):
        raise ValueError(
            f"`train_strategy`='distillation_LGViT' needs convolution (conv_normal, conv1_1, conv2_1) or "
            f"attention_rN exit heads, but the exits are {[spec.name for spec in head_specs]}; use "
            "`highway_type`='LGViT' or `train_strategy`='distillation'."
        )


def heterogeneous_exits(group: list[int]) -> list[int]:
    """The exits of a head group that take heterogeneous distillation: its first and its last."""
    return list(dict.fromkeys((group[0], group[-1])))


def lgvit_distillation_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings,
                            step: int) -> LossTerms:
    """Stage 2 `distillation_LGViT` (paper eq. 8-12): prediction, heterogeneous and homogeneous distillation.

    - prediction: (1 - a) * sum of exit cross-entropies + a * sum of exit KDs from the final logits;
    - heterogeneous (`<exit>_hete`): the first and the last exit of each group (local, global) match the last block
      (`models.feature_distillation.heterogeneous_term`, by the kind of feature the head hands out);
    - homogeneous (`<exit>_homo`): inside each group every exit matches the group's deepest exit
      (`homogeneous_term`).
    With the original 8-exit layout on ViT/DeiT this is exactly the original's set of terms.
    """
    alpha, names = settings.loss_coefficient, outputs.classifier_names()
    terms = LossTerms()
    _add_exit_ces(terms, outputs, labels, [1 - alpha] * len(outputs.exit_logits))
    _add_exit_kds(terms, outputs, settings, alpha)
    features, kinds = outputs.exit_features, outputs.feature_kinds
    teacher = outputs.teacher_tokens.detach()
    for group_name, group in lgvit_head_groups(outputs.head_specs).items():
        if not group:
            continue
        for index in heterogeneous_exits(group):
            hete = heterogeneous_term(kinds[index], features[index], teacher, outputs.grid,
                                      outputs.head_specs[index].ratio)
            terms.add(f"{names[index]}_hete", hete, settings.hete_coefficient)
        deepest = features[group[-1]].detach()
        for index in group[:-1]:
            homo = homogeneous_term(kinds[index], group_name, features[index], deepest)
            terms.add(f"{names[index]}_homo", homo, settings.homo_coefficient)
    return terms


STAGE1_LOSSES: dict[str, LossFunction] = {
    "normal": normal_loss,
    "weighted": weighted_loss,
    "alternating": _alternate(normal_loss),
    "alternating_weighted": _alternate(weighted_loss),
    "distillation": joint_distillation_loss,
}
STAGE2_LOSSES: dict[str, LossFunction] = {
    "distillation": frozen_distillation_loss,
    "distillation_LGViT": lgvit_distillation_loss,
}

"""Training losses of the two LGViT stages (paper section 3.3; original-behaviour.md sections 7-8).

Stage 1 (end to end): `normal`, `weighted`, `alternating`, `alternating_weighted`, `distillation`.
Stage 2 (backbone and final classifier frozen): `distillation` and `distillation_LGViT`.
A model picks its loss once from `STAGE1_LOSSES` / `STAGE2_LOSSES`; every function takes an `ExitOutputs`.
Teachers (the final classifier's logits, the last block's tokens that heterogeneous distillation matches, the
deepest head of each group) are always detached, so a teacher is never pulled toward its students.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .heads import global_ratio, is_local_head, sample_grid


@dataclass
class ExitOutputs:
    """Everything the losses read from one forward pass that computed every exit.

    Attributes:
        exit_logits: (B, K) per exit, in position order.
        exit_features: the feature each head hands to self-distillation, per exit.
        final_logits: (B, K) of the final classifier.
        exit_layers: 1-based layer of each exit.
        num_layers: number of backbone blocks.
        head_types: head type of each exit.
        teacher_tokens: raw patch tokens of the last block (B, P, C), the heterogeneous distillation target.
        grid: patch grid of `teacher_tokens`.
    """

    exit_logits: list[torch.Tensor]
    exit_features: list[torch.Tensor]
    final_logits: torch.Tensor
    exit_layers: list[int]
    num_layers: int
    head_types: list[str]
    teacher_tokens: torch.Tensor | None = None
    grid: tuple[int, int] | None = None


@dataclass
class LossSettings:
    """Loss weights: `loss_coefficient` is the prediction-distillation weight alpha, `homo`/`hete` the feature ones."""

    loss_coefficient: float = 0.3
    homo_coefficient: float = 0.01
    hete_coefficient: float = 0.01
    temperature: float = 2.0


def prediction_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher || p_student) at temperature T, times T^2, divided by B*K (the original's normalisation)."""
    loss = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="sum", log_target=True)
    return loss * temperature**2 / student.numel()


def _exit_ces(outputs: ExitOutputs, labels: torch.Tensor) -> list[torch.Tensor]:
    return [F.cross_entropy(logits, labels) for logits in outputs.exit_logits]


def normal_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings, step: int) -> torch.Tensor:
    """Mean of every exit's and the final classifier's cross-entropy."""
    losses = _exit_ces(outputs, labels) + [F.cross_entropy(outputs.final_logits, labels)]
    return torch.stack(losses).mean()


def weighted_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings, step: int) -> torch.Tensor:
    """Cross-entropies weighted by the 1-based layer of their classifier (the final one weighs num_layers).

    When every layer has an exit, the final classifier is left out, as in the original.
    """
    losses, weights = _exit_ces(outputs, labels), list(outputs.exit_layers)
    if len(outputs.exit_layers) != outputs.num_layers:
        losses.append(F.cross_entropy(outputs.final_logits, labels))
        weights.append(outputs.num_layers)
    weight = torch.tensor(weights, dtype=outputs.final_logits.dtype, device=outputs.final_logits.device)
    return (torch.stack(losses) * weight).sum() / weight.sum()


def _alternate(exit_loss: Callable) -> Callable:
    """Even training steps train the final classifier only; odd steps use `exit_loss`."""

    def loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings, step: int) -> torch.Tensor:
        if step % 2:
            return exit_loss(outputs, labels, settings, step)
        final = F.cross_entropy(outputs.final_logits, labels)
        # Zero-weighted exit terms keep every head in the graph, so distributed training sees no unused parameter.
        unused = sum(logits.sum() for logits in outputs.exit_logits) * 0.0
        return final + unused

    loss.__doc__ = f"Alternate between the final classifier's loss and `{exit_loss.__name__}`."
    return loss


def joint_distillation_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings,
                            step: int) -> torch.Tensor:
    """Stage 1 `distillation`: (1 - a) * normal loss + a * mean over exits of KD from the final logits."""
    alpha = settings.loss_coefficient
    teacher = outputs.final_logits.detach()
    kd = torch.stack([prediction_distillation(logits, teacher, settings.temperature)
                      for logits in outputs.exit_logits]).mean()
    return (1 - alpha) * normal_loss(outputs, labels, settings, step) + alpha * kd


def frozen_distillation_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings,
                             step: int) -> torch.Tensor:
    """Stage 2 `distillation`: exit cross-entropies weighted by (layer - 1), plus mean KD from the final logits.

    The (layer - 1) weights are the original's; if they are all zero (one exit at layer 1) the exits weigh equally.
    """
    alpha = settings.loss_coefficient
    weights = torch.tensor([layer - 1 for layer in outputs.exit_layers], dtype=outputs.final_logits.dtype,
                           device=outputs.final_logits.device)
    if weights.sum() == 0:
        weights = torch.ones_like(weights)
    ce = (torch.stack(_exit_ces(outputs, labels)) * weights).sum() / weights.sum()
    teacher = outputs.final_logits.detach()
    kd = torch.stack([prediction_distillation(logits, teacher, settings.temperature)
                      for logits in outputs.exit_logits]).mean()
    return (1 - alpha) * ce + alpha * kd


def heterogeneous_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(softmax over channels of the teacher || that of the student) per token, summed, divided by B."""
    return F.kl_div(F.log_softmax(student, dim=-1), F.softmax(teacher, dim=-1), reduction="batchmean")


def gram(features: torch.Tensor) -> torch.Tensor:
    """F^T F over tokens: (B, N, C) -> (B, C, C), so features with different token counts can be compared."""
    return features.transpose(1, 2) @ features


def _identity(features: torch.Tensor) -> torch.Tensor:
    return features


def lgvit_head_groups(head_types: list[str]) -> tuple[list[int], list[int]]:
    """Indices of the local perception (convolution) exits and of the global aggregation exits."""
    local = [i for i, head in enumerate(head_types) if is_local_head(head)]
    global_ = [i for i, head in enumerate(head_types) if global_ratio(head) is not None]
    return local, global_


def check_lgvit_distillation_layout(head_types: list[str]) -> None:
    """`distillation_LGViT` needs every exit to be a local perception or global aggregation head."""
    local, global_ = lgvit_head_groups(head_types)
    if not head_types or len(local) + len(global_) != len(head_types):
        raise ValueError(
            f"`train_strategy`='distillation_LGViT' needs convolution (conv_normal, conv1_1, conv2_1) or "
            f"attention_rN exit heads, but the exits are {head_types}; use `highway_type`='LGViT' or "
            "`train_strategy`='distillation'."
        )


def lgvit_prediction_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """Prediction part of `distillation_LGViT`: (1 - a) * sum of exit cross-entropies + a * sum of exit KDs."""
    alpha = settings.loss_coefficient
    teacher = outputs.final_logits.detach()
    ce = torch.stack(_exit_ces(outputs, labels)).sum()
    kd = torch.stack([prediction_distillation(logits, teacher, settings.temperature)
                      for logits in outputs.exit_logits]).sum()
    return (1 - alpha) * ce + alpha * kd


def heterogeneous_exits(group: list[int]) -> list[int]:
    """The exits of a head group that take heterogeneous distillation: its first and its last."""
    return list(dict.fromkeys((group[0], group[-1])))


def lgvit_distillation_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings,
                            step: int) -> torch.Tensor:
    """Stage 2 `distillation_LGViT` (paper eq. 8-12): prediction, heterogeneous and homogeneous distillation.

    - prediction: (1 - a) * sum of exit cross-entropies + a * sum of exit KDs from the final logits;
    - heterogeneous: the first and the last exit of each group (local, global) match the last block's patch
      tokens, subsampled with the head's own stride, through a channel-softmax KL;
    - homogeneous: inside each group every exit matches the group's deepest exit: local features directly (MSE),
      global ones through their Gram matrices (MSE), so different token counts compare.
    With the original 8-exit layout this is exactly the original's set of terms.
    """
    features, zero = outputs.exit_features, outputs.final_logits.new_zeros(())
    hete, homo = zero, zero
    local, global_ = lgvit_head_groups(outputs.head_types)
    for group, align in ((local, _identity), (global_, gram)):
        if not group:
            continue
        for index in heterogeneous_exits(group):
            ratio = global_ratio(outputs.head_types[index]) or 1
            target = sample_grid(outputs.teacher_tokens.detach(), outputs.grid, ratio)
            hete = hete + heterogeneous_distillation(features[index], target)
        deepest = features[group[-1]].detach()
        for index in group[:-1]:
            homo = homo + F.mse_loss(align(features[index]), align(deepest))
    prediction = lgvit_prediction_loss(outputs, labels, settings)
    return prediction + settings.hete_coefficient * hete + settings.homo_coefficient * homo


STAGE1_LOSSES: dict[str, Callable] = {
    "normal": normal_loss,
    "weighted": weighted_loss,
    "alternating": _alternate(normal_loss),
    "alternating_weighted": _alternate(weighted_loss),
    "distillation": joint_distillation_loss,
}
STAGE2_LOSSES: dict[str, Callable] = {
    "distillation": frozen_distillation_loss,
    "distillation_LGViT": lgvit_distillation_loss,
}

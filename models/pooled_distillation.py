"""Stage-2 `distillation_LGViT` for backbones whose exit heads hand out pooled vectors of different widths (Swin).

The DeiT version (`losses.lgvit_distillation_loss`) compares token features of one width and grid. On Swin every
head returns its pooled vector (B, C_s), and C_s doubles from stage to stage, so features are compared through
what every width shares: the (B, B) similarity of the samples in the batch, row-normalised, as in
similarity-preserving distillation (Tung and Mori, ICCV 2019, https://arxiv.org/abs/1907.09682).
docs/swin_distillation.md explains the choice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .losses import (
    ExitOutputs,
    LossSettings,
    frozen_distillation_loss,
    heterogeneous_exits,
    lgvit_head_groups,
    lgvit_prediction_loss,
)


def sample_similarity(features: torch.Tensor) -> torch.Tensor:
    """(B, ...) features -> (B, B) Gram matrix over the samples, each row L2-normalised (any feature width)."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the students' and the teacher's sample-similarity matrices (1/B^2 ||.||_F^2)."""
    return F.mse_loss(sample_similarity(student), sample_similarity(teacher))


def pooled_lgvit_distillation_loss(outputs: ExitOutputs, labels: torch.Tensor, settings: LossSettings,
                                   step: int) -> torch.Tensor:
    """Stage 2 `distillation_LGViT` with pooled exit features: the DeiT terms, compared through sample similarity.

    - prediction: as DeiT, (1 - a) * sum of exit cross-entropies + a * sum of exit KDs from the final logits;
    - heterogeneous: the first and the last exit of each group (local, global) match the final representation,
      the token mean of `outputs.teacher_tokens` (Swin: the vector the final classifier reads);
    - homogeneous: inside each group every exit matches the group's deepest exit.
    Both feature terms are `similarity_distillation`; every teacher is detached.
    """
    features, zero = outputs.exit_features, outputs.final_logits.new_zeros(())
    final = outputs.teacher_tokens.mean(1).detach()
    hete, homo = zero, zero
    for group in lgvit_head_groups(outputs.head_types):
        if not group:
            continue
        for index in heterogeneous_exits(group):
            hete = hete + similarity_distillation(features[index], final)
        deepest = features[group[-1]].detach()
        for index in group[:-1]:
            homo = homo + similarity_distillation(features[index], deepest)
    prediction = lgvit_prediction_loss(outputs, labels, settings)
    return prediction + settings.hete_coefficient * hete + settings.homo_coefficient * homo


POOLED_STAGE2_LOSSES: dict[str, Callable] = {
    "distillation": frozen_distillation_loss,
    "distillation_LGViT": pooled_lgvit_distillation_loss,
}

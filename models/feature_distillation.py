"""Feature terms of the stage-2 `distillation_LGViT` loss, by the kind of feature an exit head hands out
(`models.heads`: `tokens` or `pooled`).

- Token features (ViT/DeiT convolution and attention heads, one width, one patch grid): the paper's terms.
  Heterogeneous: KL(channel softmax of the teacher || that of the student) per token, the teacher being the last
  block's patch tokens subsampled with the head's own stride. Homogeneous: MSE to the group's deepest head, local
  features directly, global ones through their Gram matrices F^T F (so 49- and 25-token features compare).
- Pooled features (Swin heads, whose width doubles from stage to stage): both terms compare the (B, B) similarity
  of the samples in the batch, which every width shares (similarity-preserving distillation, Tung and Mori, ICCV
  2019, https://arxiv.org/abs/1907.09682; docs/swin-distillation.md explains the choice). The heterogeneous teacher
  is the final representation (the token mean the final classifier reads).
Teachers are always detached by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heads import POOLED, TOKENS, sample_grid


def heterogeneous_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(softmax over channels of the teacher || that of the student) per token, summed, divided by B."""
    return F.kl_div(F.log_softmax(student, dim=-1), F.softmax(teacher, dim=-1), reduction="batchmean")


def gram(features: torch.Tensor) -> torch.Tensor:
    """F^T F over tokens: (B, N, C) -> (B, C, C), so features with different token counts can be compared."""
    return features.transpose(1, 2) @ features


def sample_similarity(features: torch.Tensor) -> torch.Tensor:
    """(B, ...) features -> (B, B) Gram matrix over the samples, each row L2-normalised (any feature width)."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the students' and the teacher's sample-similarity matrices (1/B^2 ||.||_F^2)."""
    return F.mse_loss(sample_similarity(student), sample_similarity(teacher))


def heterogeneous_term(kind: str, feature: torch.Tensor, teacher_tokens: torch.Tensor, grid: tuple[int, int],
                       ratio: int | None) -> torch.Tensor:
    """One exit's match to the last block (`teacher_tokens` (B, P, C) on `grid`, detached)."""
    if kind == TOKENS:
        return heterogeneous_distillation(feature, sample_grid(teacher_tokens, grid, ratio or 1))
    if kind == POOLED:
        return similarity_distillation(feature, teacher_tokens.mean(1))
    raise ValueError(f"Exit features of kind {kind!r} have no heterogeneous distillation term.")


def homogeneous_term(kind: str, group: str, feature: torch.Tensor, deepest: torch.Tensor) -> torch.Tensor:
    """One exit's match to the deepest exit of its head group (`deepest` detached)."""
    if kind == TOKENS and group == "global":
        return F.mse_loss(gram(feature), gram(deepest))
    if kind == TOKENS:
        return F.mse_loss(feature, deepest)
    if kind == POOLED:
        return similarity_distillation(feature, deepest)
    raise ValueError(f"Exit features of kind {kind!r} have no homogeneous distillation term.")

"""Shared set-up of the accuracy-speed analysis tests: a tiny DeiT with exits and synthetic cached logits."""

from __future__ import annotations

import torch

from models import (
    DeiTHighwayConfig,
    DeiTHighwayForImageClassification,
    SwinHighwayConfig,
    SwinHighwayForImageClassification,
)
from utils.analysis.flops import FlopsProfile
from utils.analysis.risk_simulation import synthetic_logits
from utils.analysis.sweep import CachedLogits

# 6 layers of width 32 on 16x16 images with 4x4 patches; an exit after every block, including the last one, so that
# an exit on the last layer must be told apart from the final classifier.
TINY_FIELDS = dict(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=48, image_size=16,
                   patch_size=4, num_labels=5, backbone="DeiT", highway_type="LGViT", num_early_exits=6,
                   position_exits=[1, 2, 3, 4, 5, 6])


def tiny_model(seed: int = 0, **fields) -> DeiTHighwayForImageClassification:
    torch.manual_seed(seed)
    return DeiTHighwayForImageClassification(DeiTHighwayConfig(**{**TINY_FIELDS, **fields})).eval()


def tiny_swin(seed: int = 0) -> SwinHighwayForImageClassification:
    """Three stages of 2, 3 and 2 blocks on 32x32 images (8x8, 4x4, 2x2 grids); exits on layers 2, 4, 5, 7, the
    last one on the last block."""
    torch.manual_seed(seed)
    return SwinHighwayForImageClassification(SwinHighwayConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 2], num_heads=[2, 2, 4], window_size=2,
        mlp_ratio=2.0, num_labels=5, highway_type="LGViT", num_early_exits=[1, 2, 1],
        position_exits=[[2], [2, 3], [2]])).eval()


def images(batch: int, seed: int = 1, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def spread_confidence_thresholds(model: DeiTHighwayForImageClassification, pixel_values: torch.Tensor) -> list[float]:
    """Per-exit confidence thresholds at which the samples leave spread over the exits; none leaves at the exit on
    the last layer (threshold 1), so the reported exit layers are unambiguous."""
    with torch.no_grad():
        outputs = model(pixel_values, early_exit=False)
    confidences = torch.stack([logits.softmax(-1).max(-1).values for logits in outputs.exit_logits])
    num_exits = confidences.shape[0]
    thresholds = [confidences[k].quantile(1 - 1 / (num_exits - k)).item() for k in range(num_exits - 1)]
    return thresholds + [1.0]


def synthetic_cache(num_samples: int = 600, num_exits: int = 6, num_classes: int = 10, seed: int = 0
                    ) -> CachedLogits:
    """Logits whose signal grows with depth (strengths 0.5 to 3.0): later exits are more accurate and confident."""
    return synthetic_logits(num_samples, num_exits, num_classes, seed, strengths=(0.5, 3.0))


def synthetic_profile(num_exits: int = 6) -> FlopsProfile:
    """Blocks of 100 FLOPs, heads of 10, a final head of 5, an embedding of 20; exits on layers 1..E of E + 1."""
    return FlopsProfile(embedding=20, blocks=(100,) * (num_exits + 1), exits=(10,) * num_exits, final_head=5,
                        exit_layers=tuple(range(1, num_exits + 1)), exit_parameters=(7,) * num_exits)

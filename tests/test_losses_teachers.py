"""Every teacher of the distillation losses is detached: no gradient flows into the final logits, a group's deepest
exit or the heterogeneous target (docs/development.md, "every teacher detached"; models/losses.py and
models/feature_distillation.py).

The losses are called directly on leaf tensors that require gradients, so a teacher that was not detached shows
up as a non-zero gradient on its leaf; the stage-1 case is also checked through a model.
"""

from __future__ import annotations

import pytest
import torch

from models import (
    DeiTHighwayConfig,
    DeiTHighwayForImageClassification,
    SwinHighwayConfig,
    SwinHighwayForImageClassification,
)
from models.head_types import parse_head_type
from models.heads import POOLED, TOKENS
from models.losses import (
    ExitOutputs,
    LossSettings,
    frozen_distillation_loss,
    joint_distillation_loss,
    lgvit_distillation_loss,
)

BATCH, CLASSES, WIDTH, GRID = 6, 5, 8, (4, 4)
# Two groups of three: local exits 0-2 (deepest 2), global exits 3-5 (deepest 5).
HEAD_TYPES = ["conv1_1", "conv1_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3"]
DEEPEST, SHALLOWER = (2, 5), (0, 1, 3, 4)
LABELS = torch.tensor([0, 1, 2, 3, 4, 0])


def leaf(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def token_outputs() -> ExitOutputs:
    """Leaf tensors shaped like the DeiT heads' outputs: token features on the (subsampled) 4x4 patch grid."""
    features = []
    for index, head in enumerate(HEAD_TYPES):
        ratio = parse_head_type(head).ratio or 1
        tokens = -(-GRID[0] // ratio) * -(-GRID[1] // ratio)  # every ratio-th patch of the grid, both ways
        features.append(leaf(BATCH, tokens, WIDTH, seed=100 + index))
    return ExitOutputs(
        exit_logits=[leaf(BATCH, CLASSES, seed=index) for index in range(len(HEAD_TYPES))],
        exit_features=features,
        feature_kinds=[TOKENS] * len(HEAD_TYPES),
        final_logits=leaf(BATCH, CLASSES, seed=50),
        exit_layers=[1, 2, 3, 4, 5, 6],
        num_blocks=7,
        head_specs=[parse_head_type(head) for head in HEAD_TYPES],
        teacher_tokens=leaf(BATCH, GRID[0] * GRID[1], WIDTH, seed=60),
        grid=GRID,
    )


def pooled_outputs() -> ExitOutputs:
    """Leaf tensors shaped like the Swin heads' outputs: pooled vectors whose width doubles from stage to stage."""
    widths = [16, 32, 32, 32, 64, 64]
    return ExitOutputs(
        exit_logits=[leaf(BATCH, CLASSES, seed=index) for index in range(len(widths))],
        exit_features=[leaf(BATCH, width, seed=100 + index) for index, width in enumerate(widths)],
        feature_kinds=[POOLED] * len(widths),
        final_logits=leaf(BATCH, CLASSES, seed=50),
        exit_layers=[2, 3, 4, 5, 6, 7],
        num_blocks=8,
        head_specs=[parse_head_type(head) for head in
                    ("conv1_1", "conv1_1", "conv2_1", "attention_r1", "attention_r1", "attention_r2")],
        teacher_tokens=leaf(BATCH, 4, 64, seed=60),
        grid=(2, 2),
    )


def gradient(tensor: torch.Tensor) -> float:
    """Sum of squared gradient entries (0 when no gradient arrived)."""
    return 0.0 if tensor.grad is None else float(tensor.grad.pow(2).sum())


def test_stage1_distillation_sends_no_gradient_into_the_final_logits() -> None:
    outputs = token_outputs()
    joint_distillation_loss(outputs, LABELS, LossSettings(loss_coefficient=1.0), step=0).total().backward()
    assert gradient(outputs.final_logits) == 0.0
    assert all(gradient(logits) > 0 for logits in outputs.exit_logits)


def test_stage1_distillation_trains_the_final_classifier_only_through_its_own_loss() -> None:
    """The check above can see a gradient: with part of the weight on cross-entropy the final logits get one."""
    outputs = token_outputs()
    joint_distillation_loss(outputs, LABELS, LossSettings(loss_coefficient=0.5), step=0).total().backward()
    assert gradient(outputs.final_logits) > 0


@pytest.mark.parametrize("loss, features", [(frozen_distillation_loss, "tokens"), (lgvit_distillation_loss, "tokens"),
                                            (lgvit_distillation_loss, "pooled")])
def test_stage2_losses_send_no_gradient_into_the_final_logits(loss, features) -> None:
    outputs = pooled_outputs() if features == "pooled" else token_outputs()
    loss(outputs, LABELS, LossSettings(loss_coefficient=0.3, homo_coefficient=1.0, hete_coefficient=1.0),
         step=0).total().backward()
    assert gradient(outputs.final_logits) == 0.0
    assert all(gradient(logits) > 0 for logits in outputs.exit_logits)


@pytest.mark.parametrize("features", ["tokens", "pooled"])
def test_homogeneous_distillation_sends_no_gradient_into_a_groups_deepest_exit(features) -> None:
    outputs = pooled_outputs() if features == "pooled" else token_outputs()
    settings = LossSettings(homo_coefficient=1.0, hete_coefficient=0.0)
    lgvit_distillation_loss(outputs, LABELS, settings, step=0).total().backward()
    features = outputs.exit_features
    assert [gradient(features[index]) for index in DEEPEST] == [0.0, 0.0]
    assert all(gradient(features[index]) > 0 for index in SHALLOWER)


@pytest.mark.parametrize("features", ["tokens", "pooled"])
def test_heterogeneous_target_gets_no_gradient(features) -> None:
    outputs = pooled_outputs() if features == "pooled" else token_outputs()
    settings = LossSettings(homo_coefficient=0.0, hete_coefficient=1.0)
    lgvit_distillation_loss(outputs, LABELS, settings, step=0).total().backward()
    assert gradient(outputs.teacher_tokens) == 0.0
    # The first and the last exit of each group are pulled toward the target.
    assert all(gradient(outputs.exit_features[index]) > 0 for index in (0, 2, 3, 5))


def tiny_deit(**fields) -> DeiTHighwayForImageClassification:
    torch.manual_seed(0)
    return DeiTHighwayForImageClassification(DeiTHighwayConfig(
        hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=48, image_size=16,
        patch_size=4, num_labels=5, backbone="DeiT", highway_type="LGViT", num_early_exits=4, **fields))


def tiny_swin(**fields) -> SwinHighwayForImageClassification:
    torch.manual_seed(0)
    return SwinHighwayForImageClassification(SwinHighwayConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 2], num_heads=[2, 2, 4], window_size=2,
        mlp_ratio=2.0, num_labels=5, highway_type="LGViT", num_early_exits=[1, 2, 1], **fields))


@pytest.mark.parametrize("backbone", ["DeiT", "Swin"])
def test_stage1_distillation_through_a_model_leaves_the_final_classifier_without_gradient(backbone: str) -> None:
    """All weight on prediction distillation: the final classifier is the teacher, so nothing trains it."""
    if backbone == "DeiT":
        model, size = tiny_deit(train_strategy="distillation", loss_coefficient=1.0), 16
        classifiers = model.final_classifiers()
    else:
        model, size = tiny_swin(train_strategy="distillation", loss_coefficient=1.0), 32
        classifiers = [model.classifier]
    pixel_values = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    model.train()(pixel_values, labels=LABELS[:4]).loss.backward()
    assert all(gradient(p) == 0.0 for classifier in classifiers for p in classifier.parameters())
    assert all(sum(gradient(p) for p in head.parameters()) > 0 for head in model.exits)

"""Mixed-precision training on CPU autocast: every stage-1 and stage-2 strategy, every head type, ViT/DeiT and Swin
train steps in bf16 and fp16 with finite losses close to fp32's on the same batch, every loss term is computed in
float32, decisions are taken in float32; and `--precision` resolves for a CPU, a bf16-capable GPU and an older GPU
(device properties injected)."""

from __future__ import annotations

import copy

import pytest
import torch

from models import (
    DeiTHighwayConfig,
    DeiTHighwayForImageClassification,
    SwinHighwayConfig,
    SwinHighwayForImageClassification,
)
from models.exit_settings import ExitSettings
from models.exiting import decide_from_logits
from utils.arguments.precision import CudaDevice, choose_precision

DEIT_FIELDS = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48, image_size=16,
                   patch_size=4, num_labels=5)
SWIN_FIELDS = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 2], num_heads=[2, 2, 4], window_size=2,
                   mlp_ratio=2.0, num_labels=5)
HEAD_TYPES = ["linear", "conv_normal", "conv1_1", "conv2_1", "attention_r2", "self_attention", "vit", "LGViT"]
STAGE1 = ["normal", "weighted", "alternating", "alternating_weighted", "distillation"]
STAGE2 = [("distillation", {"freeze_backbone": True}), ("distillation_LGViT", {})]
# Half precision keeps 8 (bf16) or 11 (fp16) significant bits in the matrix products, and the losses are summed in
# float32; over these tiny models a step's loss moves by at most 0.15% against fp32 in either type (measured over
# every case below), so 1% is a margin of about seven.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1e-2}


def build(backbone: str, **fields) -> torch.nn.Module:
    torch.manual_seed(0)
    if backbone == "Swin":
        return SwinHighwayForImageClassification(SwinHighwayConfig(**SWIN_FIELDS, num_early_exits=[1, 2, 1],
                                                                   **fields))
    layout = {"num_early_exits": 3, "position_exits": [1, 2, 3]}
    return DeiTHighwayForImageClassification(DeiTHighwayConfig(**DEIT_FIELDS, backbone=backbone, **layout, **fields))


def step_losses(model: torch.nn.Module, dtype: torch.dtype | None, steps: int = 2) -> list[float]:
    """Losses of `steps` training steps (SGD) on one batch, under CPU autocast in `dtype` (None: fp32)."""
    model = copy.deepcopy(model).train()
    size = model.config.image_size
    images = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(images, labels=labels).loss
        assert loss.dtype == torch.float32  # every term summed in float32
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def assert_close_to_fp32(model: torch.nn.Module) -> None:
    reference = step_losses(model, None)
    for dtype, tolerance in TOLERANCE.items():
        losses = step_losses(model, dtype)
        assert all(torch.isfinite(torch.tensor(losses))), (dtype, losses)
        assert losses == pytest.approx(reference, rel=tolerance), (dtype, losses, reference)


@pytest.mark.parametrize("backbone", ["ViT", "DeiT", "Swin"])
@pytest.mark.parametrize("strategy", STAGE1)
def test_every_stage1_strategy_trains_in_bf16_and_fp16(backbone: str, strategy: str) -> None:
    assert_close_to_fp32(build(backbone, highway_type="LGViT", train_strategy=strategy))


@pytest.mark.parametrize("backbone", ["ViT", "DeiT", "Swin"])
@pytest.mark.parametrize("strategy, fields", STAGE2, ids=[name for name, _ in STAGE2])
def test_every_stage2_strategy_trains_in_bf16_and_fp16(backbone: str, strategy: str, fields: dict) -> None:
    assert_close_to_fp32(build(backbone, highway_type="LGViT", train_strategy=strategy, **fields))


@pytest.mark.parametrize("backbone", ["ViT", "Swin"])
@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_every_head_type_trains_in_bf16_and_fp16(backbone: str, head_type: str) -> None:
    assert_close_to_fp32(build(backbone, highway_type=head_type, train_strategy="weighted"))


def test_feature_distillation_terms_run_in_float32_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage-2 feature terms see float32 features with autocast off (matrix products would run in bf16)."""
    import models.losses as losses

    seen = []
    original = losses.homogeneous_term

    def spy(kind, group, feature, deepest):
        seen.append((feature.dtype, deepest.dtype, torch.is_autocast_enabled("cpu")))
        return original(kind, group, feature, deepest)

    monkeypatch.setattr(losses, "homogeneous_term", spy)
    step_losses(build("ViT", highway_type="LGViT", train_strategy="distillation_LGViT"), torch.bfloat16, steps=1)
    assert seen and all(entry == (torch.float32, torch.float32, False) for entry in seen)


@pytest.mark.parametrize("backbone", ["DeiT", "Swin"])
@pytest.mark.parametrize("criterion", ["entropy", "confidence", "patience", "patient_and_confident"])
def test_decisions_under_autocast_are_the_float32_decisions_of_the_same_logits(backbone: str, criterion: str) -> None:
    """Exit scores are computed in float32 even inside autocast (which would run a softmax of bf16 logits in bf16):
    the decisions on a bf16 model's logits, taken under autocast, equal those taken on their float32 copies."""
    model = build(backbone, highway_type="linear").eval()
    size = model.config.image_size
    images = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        every = model(images, early_exit=False)
    assert every.final_logits.dtype == torch.bfloat16
    probabilities = torch.stack(every.exit_logits).float().softmax(-1)
    scores = probabilities.amax(-1) if criterion == "confidence" else -(probabilities * probabilities.log()).sum(-1)
    # Thresholds at each exit's median score, so the samples split between leaving and staying.
    settings = ExitSettings(criterion, tuple(scores.median(dim=1).values.tolist()), 2)
    layout = (model.config.exit_positions(), model.config.num_blocks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = decide_from_logits(settings, every.exit_logits, every.final_logits, *layout)
    exact = decide_from_logits(settings, [logits.float() for logits in every.exit_logits], every.final_logits.float(),
                               *layout)
    assert torch.equal(mixed.exit_layer, exact.exit_layer)
    assert len(set(exact.exit_layer.tolist())) > 1


OLD_GPU = CudaDevice("Tesla V100-SXM2-16GB", (7, 0))
NEW_GPU = CudaDevice("NVIDIA H100 80GB HBM3", (9, 0))


@pytest.mark.parametrize("device, expected, tf32", [(None, "fp32", False), (NEW_GPU, "bf16", True),
                                                    (OLD_GPU, "fp16", False)], ids=["cpu", "bf16_gpu", "older_gpu"])
def test_auto_picks_bf16_fp16_or_fp32_by_device(device, expected, tf32) -> None:
    choice = choose_precision("auto", device)
    assert (choice.name, choice.tf32) == (expected, tf32)
    assert (device.name if device else "without a CUDA GPU") in choice.reason


def test_explicit_precisions_and_their_refusals() -> None:
    assert not choose_precision("fp32", NEW_GPU).tf32 and not choose_precision("fp32", OLD_GPU).tf32
    assert choose_precision("bf16", None).mixed == "bf16"
    with pytest.raises(ValueError, match="bfloat16.*PRECISION=fp16"):
        choose_precision("bf16", OLD_GPU)
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        choose_precision("fp16", None)
    with pytest.raises(ValueError, match="must be one of auto, bf16, fp16, fp32"):
        choose_precision("fp8", NEW_GPU)

"""A tiny DeiT trained for a few dozen steps (60) on real data (scikit-learn's digits) lowers its loss."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from models import DeiTHighwayConfig, DeiTHighwayForImageClassification

STRATEGIES = [
    ("normal", False), ("weighted", False), ("alternating", False), ("alternating_weighted", False),
    ("distillation", False), ("distillation", True), ("distillation_LGViT", True),
]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    images = F.interpolate(images, size=16, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return images, torch.tensor(data.target)


def strategy_loss(model, images, labels, step: int) -> float:
    """The strategy's training loss on a fixed batch, at a fixed alternation step, without changing the model."""
    state = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.alternation_phase = step % 2
    with torch.no_grad():
        loss = model(images, labels=labels).loss.item()
    for name, buffer in model.named_buffers():
        buffer.copy_(state[name])
    return loss


@pytest.mark.parametrize("strategy,frozen", STRATEGIES)
def test_loss_decreases_on_digits(digits, strategy, frozen):
    images, labels = digits
    torch.manual_seed(0)
    model = DeiTHighwayForImageClassification(DeiTHighwayConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=4, num_labels=10, backbone="DeiT", highway_type="LGViT", num_early_exits=2,
        train_strategy=strategy, freeze_backbone=frozen)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    probe_images, probe_labels = images[:256], labels[:256]
    before = [strategy_loss(model, probe_images, probe_labels, step) for step in (0, 1)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = torch.randint(0, len(images), (64,), generator=generator)
        loss = model(images[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = [strategy_loss(model, probe_images, probe_labels, step) for step in (0, 1)]
    assert all(a < b - 0.02 for a, b in zip(after, before)), (before, after)

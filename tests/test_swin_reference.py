"""The Swin classifier against expectations built in this file, not taken from the modules under test.

- Exit decisions: every exit's logits come from `model(x, early_exit=False)`; a plain per-sample loop written here
  (softmax, natural-log entropy, confidence, the patience counters) gives each sample's exit layer and logits,
  which the online early exit `model(x)` must reproduce at random thresholds.
- Losses: every stage-1 and stage-2 training loss written out with F.cross_entropy and F.kl_div, following the
  formulas of models/losses.py, models/pooled_distillation.py and docs/swin-distillation.md.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import SwinHighwayConfig, SwinHighwayForImageClassification

# Three stages of 2, 4 and 2 blocks (8x8, 4x4, 2x2 grids; widths 16, 32, 64): 8 layers. Exits [2, 3, 1] per stage
# on blocks [1, 2], [1, 3, 4], [1] of their stages sit at global layers 1, 2, 3, 5, 6, 7 (a gap, so a weight taken
# from the exit's index instead of its layer shows); with LGViT heads the layout is conv1_1, conv2_1 (stage 1),
# attention_r1 x2, attention_r2 (stage 2), attention_r2 (stage 3).
FIELDS = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 4, 2], num_heads=[2, 2, 4], window_size=2,
              mlp_ratio=2.0, num_labels=5, num_early_exits=[2, 3, 1], position_exits=[[1, 2], [1, 3, 4], [1]])
NUM_LAYERS, EXIT_LAYERS = 8, [1, 2, 3, 5, 6, 7]
LABELS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
TEMPERATURE = 2.0


def model_with(seed: int = 0, **fields) -> SwinHighwayForImageClassification:
    torch.manual_seed(seed)
    return SwinHighwayForImageClassification(SwinHighwayConfig(**{**FIELDS, **fields}))


def images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- exit decisions


def reference_decisions(exit_logits: list[torch.Tensor], final_logits: torch.Tensor, strategy: str,
                        thresholds: list[float], patience: int) -> tuple[list[int], torch.Tensor]:
    """Each sample's 1-based exit layer and the logits it leaves with, one sample and one exit at a time."""
    layers, chosen = [], []
    for sample in range(final_logits.shape[0]):
        layer, logits_out = NUM_LAYERS, final_logits[sample]
        count, previous = 0, None
        for index, logits in enumerate(exit_logits):
            row = logits[sample].double()
            probabilities = torch.softmax(row, dim=0)
            entropy = -(probabilities * torch.log(probabilities)).sum().item()
            if strategy == "entropy":
                leave = entropy < thresholds[index]
            elif strategy == "confidence":
                leave = probabilities.max().item() > thresholds[index]
            elif strategy == "patience":
                # The first exit starts the count at 1; agreeing with the previous exit adds 1, disagreeing restarts.
                prediction = int(row.argmax())
                count = count + 1 if prediction == previous else 1
                previous = prediction
                leave = count == patience
            else:  # patient_and_confident: consecutive exits below their entropy threshold; a miss resets to 0
                count = count + 1 if entropy < thresholds[index] else 0
                leave = count == patience
            if leave:
                layer, logits_out = EXIT_LAYERS[index], logits[sample]
                break
        layers.append(layer)
        chosen.append(logits_out)
    return layers, torch.stack(chosen)


@pytest.mark.parametrize("strategy", ["entropy", "confidence", "patience", "patient_and_confident"])
def test_online_exits_equal_a_per_sample_reference(strategy: str) -> None:
    model = model_with(highway_type="LGViT").eval()
    assert model.config.exit_positions() == EXIT_LAYERS and model.config.num_blocks == NUM_LAYERS
    pixel_values = images(16)
    with torch.no_grad():
        every = model(pixel_values, early_exit=False)
    exit_logits = list(every.exit_logits)
    stacked = torch.softmax(torch.stack(exit_logits).double(), dim=-1)
    if strategy == "confidence":
        scores = stacked.max(-1).values
    else:
        scores = -(stacked * stacked.log()).sum(-1)
    low, high = scores.min(1).values, scores.max(1).values  # per exit
    generator = torch.Generator().manual_seed(5)
    seen = set()
    for _ in range(6):
        thresholds = (low + (high - low) * torch.rand(6, generator=generator, dtype=torch.float64)).tolist()
        patience = int(torch.randint(1, 4, (), generator=generator))
        model.config.exit_strategy, model.config.threshold, model.config.patience = strategy, thresholds, patience
        expected_layers, expected_logits = reference_decisions(exit_logits, every.final_logits, strategy,
                                                               thresholds, patience)
        with torch.no_grad():
            online = model(pixel_values)
        assert online.exit_layer.tolist() == expected_layers, (thresholds, patience)
        torch.testing.assert_close(online.logits, expected_logits, atol=1e-5, rtol=1e-4)
        seen.update(expected_layers)
    assert len(seen) >= 3, seen  # the drawn settings send samples to several layers, the final one included


# ------------------------------------------------------------------------------------------------------ losses


def cross_entropies(logits: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.cross_entropy(value, LABELS) for value in logits]


def kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) at T = 2, times T^2, over B * K."""
    kl = F.kl_div(F.log_softmax(student / TEMPERATURE, dim=1), F.log_softmax(teacher.detach() / TEMPERATURE, dim=1),
                  reduction="sum", log_target=True)
    return kl * TEMPERATURE**2 / student.numel()


def normal(exits: list[torch.Tensor], final: torch.Tensor) -> torch.Tensor:
    return sum(cross_entropies([*exits, final])) / (len(exits) + 1)


def weighted(exits: list[torch.Tensor], final: torch.Tensor) -> torch.Tensor:
    weights = [*EXIT_LAYERS, NUM_LAYERS]  # the final classifier weighs the full depth, 8
    return sum(w * ce for w, ce in zip(weights, cross_entropies([*exits, final]))) / sum(weights)


def stage1_expectation(strategy: str, step: int, exits: list[torch.Tensor], final: torch.Tensor,
                       alpha: float) -> torch.Tensor:
    if strategy in ("alternating", "alternating_weighted") and step % 2 == 0:
        return F.cross_entropy(final, LABELS)  # even steps: the final classifier alone
    if strategy in ("normal", "alternating"):
        return normal(exits, final)
    if strategy in ("weighted", "alternating_weighted"):
        return weighted(exits, final)
    return (1 - alpha) * normal(exits, final) + alpha * sum(kd(s, final) for s in exits) / len(exits)


@pytest.mark.parametrize("strategy,step", [
    ("normal", 0), ("weighted", 0), ("alternating", 0), ("alternating", 1), ("alternating_weighted", 2),
    ("alternating_weighted", 3), ("distillation", 0),
])
def test_stage1_losses_written_out(strategy: str, step: int) -> None:
    model = model_with(highway_type="LGViT", train_strategy=strategy, loss_coefficient=0.3).train()
    model.alternation_phase = step % 2
    outputs = model(images(8), labels=LABELS)
    # An alternating strategy's training forward flips the phase, as the original's counter; the others keep it.
    assert model.alternation_phase == ((step + 1) % 2 if strategy.startswith("alternating") else step % 2)
    expected = stage1_expectation(strategy, step, list(outputs.exit_logits), outputs.final_logits, 0.3)
    assert outputs.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_stage2_distillation_written_out() -> None:
    model = model_with(highway_type="LGViT", train_strategy="distillation", freeze_backbone=True,
                       loss_coefficient=0.3).train()
    outputs = model(images(8), labels=LABELS)
    exits, final = list(outputs.exit_logits), outputs.final_logits
    weights = [layer - 1 for layer in EXIT_LAYERS]  # 0, 1, 2, 4, 5, 6: the exit on layer 1 does not count
    ce = sum(w * value for w, value in zip(weights, cross_entropies(exits))) / sum(weights)
    expected = 0.7 * ce + 0.3 * sum(kd(s, final) for s in exits) / len(exits)
    assert outputs.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def similarity(features: torch.Tensor) -> torch.Tensor:
    """The (B, B) Gram matrix of the samples, each row divided by its Euclidean norm."""
    flat = features.reshape(features.shape[0], -1)
    gram = flat @ flat.T
    return gram / gram.norm(dim=1, keepdim=True)


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    difference = similarity(student) - similarity(teacher.detach())
    return (difference**2).sum() / difference.numel()


def test_stage2_lgvit_distillation_written_out() -> None:
    model = model_with(highway_type="LGViT", train_strategy="distillation_LGViT", loss_coefficient=0.3,
                       homo_coefficient=0.5, hete_coefficient=0.7).train()
    assert [spec.name for spec in model.config.head_specs()] == ["conv1_1", "conv2_1", "attention_r1", "attention_r1",
                                                                 "attention_r2", "attention_r2"]
    outputs = model(images(8), labels=LABELS)
    exits, features, final = list(outputs.exit_logits), list(outputs.exit_features), outputs.final_logits
    with torch.no_grad():  # the vector the final classifier reads: final LayerNorm of the last block, token mean
        hidden = model.swin.embeddings(images(8))[0]
        for stage, grid in zip(model.swin.encoder.layers, [(8, 8), (4, 4), (2, 2)]):
            for block in stage.blocks:
                hidden = tapped = block(hidden, grid)[0]
            if stage.downsample is not None:
                hidden = stage.downsample(tapped, grid)
        representation = model.swin.layernorm(tapped).mean(1)
        torch.testing.assert_close(model.classifier(representation), final)
    prediction = 0.7 * sum(cross_entropies(exits)) + 0.3 * sum(kd(s, final) for s in exits)
    # Local group: exits 0, 1; global group: exits 2..5. Heterogeneous: the first and the last exit of each group;
    # homogeneous: every other exit of a group toward its deepest one.
    hete = sum(similarity_loss(features[i], representation) for i in (0, 1, 2, 5))
    homo = similarity_loss(features[0], features[1]) + sum(similarity_loss(features[i], features[5])
                                                           for i in (2, 3, 4))
    expected = prediction + 0.7 * hete + 0.5 * homo
    assert outputs.loss.item() == pytest.approx(expected.item(), rel=1e-5)

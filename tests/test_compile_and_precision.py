"""The early-exit forward under torch.compile, and in half precision: the same decisions as eager float32."""

from __future__ import annotations

import pytest
import torch
from analysis_helpers import images, tiny_model
from decision_helpers import spread_logits, thresholds_away_from_scores

from models import SwinHighwayConfig, SwinHighwayForImageClassification
from models.criteria import EXIT_CRITERIA, get_criterion


def set_exits(model, criterion: str, thresholds: list[float], patience: int) -> None:
    model.config.exit_strategy, model.config.threshold, model.config.patience = criterion, thresholds, patience


def test_compiled_swin_segments_decide_like_eager():
    """`compile_exits` compiles every segment with fullgraph=True (a graph break is an error) and dynamic batch
    sizes; `aot_eager` traces through dynamo and AOTAutograd like inductor, without generating C++."""
    pixel_values = images(12, seed=7, size=32)
    torch.manual_seed(5)
    config = SwinHighwayConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 2], num_heads=[2, 2, 4],
                               window_size=2, mlp_ratio=2.0, num_labels=5, highway_type="LGViT",
                               num_early_exits=[0, 1, 0], position_exits=[[], [2], []])
    eager = spread_logits(SwinHighwayForImageClassification(config).eval(), pixel_values)
    compiled = type(eager)(eager.config).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_exits(backend="aot_eager")
    with torch.no_grad():
        every = torch.stack(eager(pixel_values, early_exit=False).exit_logits)
    generator = torch.Generator().manual_seed(3)
    for criterion in sorted(EXIT_CRITERIA):
        set_exits(eager, criterion, thresholds_away_from_scores(criterion, every, generator, 1e-4), 1)
        set_exits(compiled, criterion, eager.config.threshold, 1)
        with torch.no_grad():
            expected, actual = eager(pixel_values), compiled(pixel_values)
        assert actual.exit_layer.tolist() == expected.exit_layer.tolist(), criterion
        torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=1e-4)


def test_inductor_compiles_the_segments():
    """The default backend, generating code, on a small model with one exit."""
    pixel_values = images(8, seed=2)
    eager = spread_logits(tiny_model(seed=6, num_early_exits=1, position_exits=[3], highway_type="conv1_1"),
                          pixel_values)
    compiled = type(eager)(eager.config).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_exits()
    with torch.no_grad():
        confidence = eager(pixel_values, early_exit=False).exit_logits[0].softmax(-1).amax(-1).sort().values
    for threshold in (0.0, float(confidence[3:5].mean()), 1.0):  # every sample, about half of them, none
        eager.config.threshold = compiled.config.threshold = threshold
        with torch.no_grad():
            expected, actual = eager(pixel_values), compiled(pixel_values)
        assert actual.exit_layer.tolist() == expected.exit_layer.tolist()
        torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("criterion", sorted(EXIT_CRITERIA))
def test_half_precision_gives_the_float32_exits_away_from_ties(dtype, criterion):
    """Away from ties: for the samples whose scores lie farther from the thresholds, and (for the class-agreement
    rule) whose top-two logits lie farther apart, than three times the largest difference the precision makes at
    any exit, the decisions are those of float32."""
    pixel_values = images(24, seed=9)
    model = spread_logits(tiny_model(seed=8), pixel_values)
    half = type(model)(model.config).eval()
    half.load_state_dict(model.state_dict())
    half.to(dtype)
    with torch.no_grad():
        exit_logits = torch.stack(model(pixel_values, early_exit=False).exit_logits)
        half_logits = torch.stack(half(pixel_values, early_exit=False).exit_logits).float()
    rule = get_criterion(criterion)
    clear = torch.ones(24, dtype=torch.bool)
    thresholds = [0.0] * exit_logits.shape[0]
    if rule.uses_threshold:
        scores = torch.stack([rule.score(logits) for logits in exit_logits])  # (E, B)
        error = (torch.stack([rule.score(logits) for logits in half_logits]) - scores).abs().max()
        thresholds = scores.quantile(0.5, dim=1).tolist()
        clear &= ((scores - torch.tensor(thresholds)[:, None]).abs() > 3 * error).all(0)
    if rule.rule == "agreement":
        top_two = exit_logits.topk(2, dim=-1).values
        clear &= ((top_two[..., 0] - top_two[..., 1]) > 3 * (half_logits - exit_logits).abs().max()).all(0)
    for target in (model, half):
        set_exits(target, criterion, thresholds, 2)
    with torch.no_grad():
        expected, actual = model(pixel_values), half(pixel_values)
    assert actual.logits.dtype == dtype
    assert clear.sum() >= 6, "enough samples should be clear of ties"
    assert actual.exit_layer[clear].tolist() == expected.exit_layer[clear].tolist()
    assert len(set(expected.exit_layer[clear].tolist())) >= 2, "the clear samples should leave at several exits"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_logits_still_exit_by_entropy(dtype):
    """Logits in the hundreds: e^x overflows (float16 above ~11, float32 above ~88), and the original's entropy
    formula then gives NaN, so no sample ever left by entropy."""
    model = tiny_model(seed=1, exit_strategy="entropy", threshold=0.1).to(dtype)
    with torch.no_grad():
        for head in model.exits:
            for classifier in head.classifiers:
                classifier.bias.copy_(torch.tensor([500.0, 0.0, 0.0, 0.0, 0.0]))
        outputs = model(images(8, seed=1))
        every = model(images(8, seed=1), early_exit=False)
    assert every.exit_logits[0].abs().max() > 100
    assert outputs.exit_layer.tolist() == [1] * 8  # a distribution this peaked has entropy ~0 < 0.1

"""Threshold sweeps on cached logits equal the online early-exit evaluation, for every criterion."""

import math

import pytest
import torch
from analysis_helpers import images, synthetic_cache, synthetic_profile, tiny_model, tiny_swin

from models.criteria import entropy
from utils.analysis.flops import count_flops, profile_flops
from utils.analysis.sweep import (
    CachedLogits,
    collect_logits,
    evaluate_settings,
    exit_decisions,
    exit_layers_of,
    load_sweep,
    pareto_front,
    save_sweep,
    sweep,
    sweep_criterion,
    threshold_grid,
)

CRITERIA = ["entropy", "confidence", "patience", "patient_and_confident"]


@pytest.fixture(scope="module")
def analysed():
    """A tiny model, 48 images with random labels, their cached logits and the model's FLOPs profile."""
    model = tiny_model()
    pixel_values = images(48)
    labels = torch.randint(0, 5, (48,), generator=torch.Generator().manual_seed(3))
    batches = [{"pixel_values": pixel_values[i:i + 16], "labels": labels[i:i + 16]} for i in range(0, 48, 16)]
    return model, pixel_values, labels, collect_logits(model, batches), profile_flops(model)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_cached_decisions_equal_online_early_exit_at_sampled_thresholds(analysed, criterion):
    model, pixel_values, labels, cache, profile = analysed
    if criterion == "confidence":
        scores = torch.softmax(cache.exit_logits, -1).max(-1).values
    else:
        scores = entropy(cache.exit_logits.reshape(-1, 5))
    low, high = scores.min().item(), scores.max().item()
    generator = torch.Generator().manual_seed(11)
    seen_layers = set()
    for trial in range(4):
        # A shared value for some trials, one value per exit for the others; thresholds drawn inside the scores.
        draws = low + (high - low) * torch.rand(6 if trial % 2 else 1, generator=generator)
        model.config.exit_strategy = criterion
        model.config.threshold = draws.tolist() if trial % 2 else draws.item()
        model.config.patience = 1 + trial % 3
        settings = model.config.exit_settings()
        with torch.no_grad():
            counted, online = count_flops(model, pixel_values)
        point = evaluate_settings(cache, settings, profile)
        _, exit_index = exit_decisions(cache, settings)
        assert exit_layers_of(cache, exit_index).tolist() == online.exit_layer.tolist()
        seen_layers.update(online.exit_layer.tolist())
        assert point.accuracy == pytest.approx((online.logits.argmax(-1) == labels).double().mean().item())
        assert point.average_exit_layer == pytest.approx(online.exit_layer.double().mean().item())
        assert point.layer_speedup == pytest.approx(6 / online.exit_layer.double().mean().item())
        # FLOPs counted on the online run (batch of 48) equal the per-sample costs of the cached decisions, also
        # for samples that left at the exit on the last layer (they skip the final head).
        assert point.average_flops * len(labels) == pytest.approx(counted, rel=1e-12)
        assert point.flops_speedup == pytest.approx(profile.full_model * len(labels) / counted)
    assert len(seen_layers) >= 3, seen_layers  # the drawn thresholds send samples to several exits


def test_sweep_covers_every_criterion_and_its_extremes():
    cache, profile = synthetic_cache(), synthetic_profile()
    curves = sweep(cache, profile, num_thresholds=21)
    assert set(curves) == set(CRITERIA)
    assert [p.patience for p in curves["patience"]] == [1, 2, 3, 4, 5, 6]
    grid = threshold_grid(cache, "entropy", 21)
    assert len(curves["patient_and_confident"]) == 6 * len(grid)
    final = cache.final_accuracy()
    for name in ("entropy", "confidence", "patient_and_confident"):
        never = min(curves[name], key=lambda p: p.flops_speedup)
        assert never.accuracy == pytest.approx(final) and never.average_exit_layer == 7
        assert never.flops_speedup == pytest.approx(profile.full_model / profile.exit_costs()[-1].item())
    first = max(curves["entropy"], key=lambda p: p.flops_speedup)  # every sample at exit 1
    assert first.average_exit_layer == 1 and first.accuracy == pytest.approx(cache.exit_accuracies()[0])
    patience_one = curves["patience"][0]
    assert patience_one.average_exit_layer == 1


def test_threshold_grids_stay_in_range():
    cache = synthetic_cache()
    confidence = threshold_grid(cache, "confidence", 11)
    assert confidence[0] == 0.0 and confidence[-1] == 1.0 and confidence == sorted(confidence)
    entropy_grid = threshold_grid(cache, "entropy", 11)
    assert entropy_grid[0] == 0.0 and entropy_grid[-1] <= math.log(10) + 1e-6
    assert threshold_grid(cache, "patience") == [0.0]


def test_per_exit_threshold_lists_are_accepted():
    cache, profile = synthetic_cache(), synthetic_profile()
    points = sweep_criterion(cache, profile, "confidence", thresholds=[[0.9] * 5 + [0.1], 0.5])
    assert points[0].thresholds == (0.9,) * 5 + (0.1,) and points[1].thresholds == (0.5,) * 6
    with pytest.raises(ValueError, match="6 exits"):
        sweep_criterion(cache, profile, "confidence", thresholds=[[0.5, 0.5]])


def test_pareto_front_keeps_only_undominated_points():
    cache, profile = synthetic_cache(), synthetic_profile()
    points = sweep_criterion(cache, profile, "patient_and_confident", num_thresholds=11)
    front = pareto_front(points)
    assert [p.flops_speedup for p in front] == sorted(p.flops_speedup for p in front)

    def covers(a, b):  # a is at least as fast and as accurate as b
        return a.flops_speedup >= b.flops_speedup and a.accuracy >= b.accuracy

    assert not any(covers(p, f) and p.settings() != f.settings() and (p.flops_speedup, p.accuracy) !=
                   (f.flops_speedup, f.accuracy) for f in front for p in points)
    assert all(any(covers(f, p) for f in front) for p in points)


def test_cache_and_sweep_files_round_trip(tmp_path, analysed):
    _, _, _, cache, profile = analysed
    cache.save(tmp_path / "logits.pt")
    loaded = CachedLogits.load(tmp_path / "logits.pt")
    assert loaded.exit_layers == cache.exit_layers and loaded.num_blocks == cache.num_blocks
    assert torch.equal(loaded.exit_logits, cache.exit_logits) and torch.equal(loaded.labels, cache.labels)
    first, rest = cache.split(0.25, seed=0)
    assert len(first) == 12 and len(rest) == 36
    curves = sweep(cache, profile, strategies=["confidence"], num_thresholds=5)
    path = save_sweep(curves, tmp_path / "sweep.json", extra={"flops": profile.to_dict()})
    assert load_sweep(path) == curves


def test_collect_logits_accepts_pairs_and_restores_training_mode(analysed):
    model, pixel_values, labels, cache, _ = analysed
    model.train()
    again = collect_logits(model, [(pixel_values[:20], labels[:20]), (pixel_values[20:], labels[20:])])
    assert model.training
    model.eval()
    assert again.exit_logits.shape == (6, 48, 5) and again.exit_layers == (1, 2, 3, 4, 5, 6)
    torch.testing.assert_close(again.exit_logits, cache.exit_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_swin_sweep_equals_online_early_exit(criterion):
    """The same holds on Swin (patch merging inside a stage's last block, exits of several widths)."""
    model = tiny_swin()
    pixel_values = images(24, size=32)
    labels = torch.randint(0, 5, (24,), generator=torch.Generator().manual_seed(2))
    cache, profile = collect_logits(model, [(pixel_values, labels)]), profile_flops(model)
    assert cache.exit_layers == (2, 4, 5, 7) and cache.num_blocks == 7 and profile.num_blocks == 7
    grid = threshold_grid(cache, criterion, 5)
    model.config.exit_strategy, model.config.patience = criterion, 2
    model.config.threshold = grid[len(grid) // 2]
    counted, online = count_flops(model, pixel_values)
    point = evaluate_settings(cache, model.config.exit_settings(), profile)
    _, exit_index = exit_decisions(cache, model.config.exit_settings())
    assert exit_layers_of(cache, exit_index).tolist() == online.exit_layer.tolist()
    assert point.accuracy == pytest.approx((online.logits.argmax(-1) == labels).double().mean().item())
    assert point.average_flops * 24 == pytest.approx(counted, rel=1e-12)

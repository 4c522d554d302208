"""Temperature scaling per exit: the fit, its folding into the exit heads, and the calibration error it reports."""

from __future__ import annotations

import math

import pytest
import torch
from analysis_helpers import images, tiny_model, tiny_swin

from utils.analysis.metrics import expected_calibration_error
from utils.analysis.sweep import CachedLogits, collect_logits
from utils.analysis.temperature import (
    LOG_T_LIMIT,
    check_folded,
    fit_exit_temperatures,
    fit_temperature,
    fold_temperatures,
    scale_exits,
)


def test_fit_recovers_the_temperature_of_overconfident_logits():
    generator = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(20000, 10, generator=generator)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)  # calibrated logits
    assert fit_temperature(3.0 * logits, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(0.5 * logits, labels) == pytest.approx(0.5, rel=0.05)
    before = expected_calibration_error(3.0 * logits, labels)
    after = expected_calibration_error(3.0 * logits / fit_temperature(3.0 * logits, labels), labels)
    assert after < 0.02 < before


def test_expected_calibration_error_by_hand():
    # Confidence 0.8 on four rows, three of them right: |0.75 - 0.8| = 0.05; two rows at confidence ~1, right: 0.
    logits = torch.tensor([[0.0, math.log(0.25)]] * 4 + [[50.0, 0.0]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 0, 0])
    assert expected_calibration_error(logits, labels) == pytest.approx(4 / 6 * 0.05, abs=1e-9)
    assert expected_calibration_error(logits[4:], labels[4:]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("model", [tiny_model(), tiny_model(highway_type="linear"), tiny_model(highway_type="vit"),
                                   tiny_swin()], ids=["LGViT", "linear", "vit", "swin"])
def test_folded_temperatures_divide_each_exits_logits(model):
    pixels = images(12, size=model.config.image_size)
    labels = torch.arange(12) % 5
    before = collect_logits(model, [(pixels, labels)])
    temperatures = [0.5 + index for index in range(model.config.num_exits)]
    fold_temperatures(model, temperatures)
    after = collect_logits(model, [(pixels, labels)])
    check_folded(before, after, temperatures)
    for index, temperature in enumerate(temperatures):
        torch.testing.assert_close(after.exit_logits[index], before.exit_logits[index] / temperature)
    assert torch.equal(after.final_logits, before.final_logits)
    assert torch.equal(after.exit_logits.argmax(-1), before.exit_logits.argmax(-1))
    with pytest.raises(RuntimeError, match="did not divide its logits"):
        check_folded(before, after, [1.0] * model.config.num_exits)


def test_exit_temperatures_are_fitted_per_exit():
    generator = torch.Generator().manual_seed(1)
    base = 2.0 * torch.randn(3000, 10, generator=generator)
    labels = torch.multinomial(torch.softmax(base, -1), 1, generator=generator).squeeze(1)
    cache = CachedLogits(torch.stack([base * 0.5, base * 2.0]), base, labels, (1, 2), 3)
    assert fit_exit_temperatures(cache) == pytest.approx([0.5, 2.0], rel=0.07)


def test_an_exit_right_on_every_fitting_image_keeps_temperature_one(caplog):
    """With every label the strict top class the likelihood keeps rising as T shrinks: the search would end at its
    limit (T ~ 0.02), every confidence near 1, and no threshold could then keep the exit's wrong answers from
    leaving. Such an exit keeps T = 1, and the run says so; one wrong image makes the fit finite again."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(60, 10, generator=generator)
    right = logits.argmax(-1)
    assert fit_temperature(logits, right) == 1.0
    wrong = right.clone()
    wrong[0] = (right[0] + 1) % 10
    assert math.exp(-LOG_T_LIMIT) * 1.01 < fit_temperature(logits, wrong) < math.exp(LOG_T_LIMIT) / 1.01
    tied = logits.clone()
    tied[0, (right[0] + 1) % 10] = tied[0, right[0]]  # a tie at the top is no strict answer: the fit stays finite
    assert fit_temperature(tied, right) != 1.0

    model = tiny_model(seed=2)
    pixels = images(48, seed=3)
    with torch.no_grad():
        every = model(pixels, early_exit=False)
    labels = every.exit_logits[0].argmax(-1)  # exit 0 is right on every image, the others are not
    cache = collect_logits(model, [(pixels, labels)])
    with caplog.at_level("WARNING"):
        _, fit = scale_exits(model, cache, 0.25, lambda indices: collect_logits(model, [(pixels[indices],
                                                                                          labels[indices])]), seed=4)
    assert fit.temperatures[0] == 1.0 and all(temperature != 1.0 for temperature in fit.temperatures[1:])
    assert "Exits [0] answered all 12 temperature-fitting images right" in caplog.text


def test_temperatures_are_fitted_on_images_the_thresholds_never_see():
    """`scale_exits` fits on its share of the calibration images and hands back only the others, scaled: fitting on
    the images that then certify (all of them, or the certifying ones) would let them choose the candidates."""
    model = tiny_model(seed=2)
    pixels = images(48, seed=3)
    with torch.no_grad():
        labels = model(pixels, early_exit=False).final_logits.argmax(-1)  # labels the exits partly predict
    cache = collect_logits(model, [(pixels, labels)])
    handed_back = []

    def recollect(indices):
        handed_back.extend(indices)
        return collect_logits(model, [(pixels[indices], labels[indices])])

    certifying, fit = scale_exits(model, cache, 0.25, recollect, seed=4)
    fitting = sorted(set(range(48)) - set(handed_back))
    assert len(set(handed_back)) == len(handed_back) == len(certifying) == 36
    assert fit.fit_samples == len(fitting) == 12
    assert torch.equal(certifying.labels, labels[handed_back])
    assert fit.temperatures == pytest.approx(fit_exit_temperatures(cache.select(torch.tensor(fitting))), rel=1e-6)
    # The test can tell the fits apart: the certifying images, or all images, give other temperatures.
    for other in (handed_back, list(range(48))):
        assert fit_exit_temperatures(cache.select(torch.tensor(other))) != pytest.approx(fit.temperatures, rel=1e-3)

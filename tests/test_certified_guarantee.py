"""The certified thresholds keep their promise, tested statistically; today's empirical rule does not.

A population with every exit's logits is known in full: a synthetic multi-exit model, and the cached logits of a
real run (tests/fixtures/certification: the SDN model of the digits comparison on its 306 calibration and 270
evaluation images). Each draw takes a calibration set from it, each rule chooses an exit setting on that set,
and the choice is measured on the whole population. The certified rule promises that at most a share delta of the
draws breaks the budget: the upper end of a 99% exact interval of that share must be <= delta. The empirical rule
must break its own promise (accuracy drop within the budget) in clearly more than delta of the draws, or the test
could not tell the rules apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.analysis.calibration import calibrate
from utils.analysis.certification import candidate_sequences, candidate_table
from utils.analysis.risk_simulation import (
    RuleOutcome,
    empirical_choice,
    read_population,
    read_profile,
    simulate,
    simulate_with_temperatures,
    synthetic_population,
)

FIXTURES = Path(__file__).parent / "fixtures" / "certification"
EPSILON, DELTA = 1.0, 0.1  # points, risk level


def real_population():
    return read_population(FIXTURES / "digits_sdn_logits.pt"), read_profile(FIXTURES / "digits_sdn_flops.json")


def keeps_promise(outcome: RuleOutcome, failures: int) -> bool:
    """The test: with 99% confidence, at most a share delta of the draws breaks the budget."""
    return outcome.failure_interval(failures)[1] <= DELTA


def assert_certified_holds_and_empirical_breaks(outcomes):
    certified, empirical = outcomes["certified"], outcomes["empirical"]
    assert keeps_promise(certified, certified.risk_failures), certified
    assert certified.drop_failures <= certified.risk_failures  # the drop is never above the certified risk
    # The same test fails for the empirical rule, on its own promise (the accuracy drop): it has power.
    assert not keeps_promise(empirical, empirical.drop_failures), empirical
    assert empirical.failure_interval(empirical.drop_failures)[0] > DELTA, empirical  # clearly, not by chance
    assert empirical.mean_flops_speedup > certified.mean_flops_speedup > 1.0  # the price of the guarantee


@pytest.mark.parametrize("strategy", ["confidence", "patient_and_confident"])
def test_promise_holds_on_a_synthetic_population(strategy):
    population, profile = synthetic_population(4000, seed=1)
    outcomes = simulate(population, profile, strategy, 300, EPSILON, DELTA, draws=1000, seed=2)
    assert_certified_holds_and_empirical_breaks(outcomes)


def test_promise_holds_on_a_real_runs_logits():
    population, profile = real_population()
    assert len(population) == 576 and population.num_exits == 11
    outcomes = simulate(population, profile, "confidence", 306, EPSILON, DELTA, draws=1000, seed=3)
    assert_certified_holds_and_empirical_breaks(outcomes)


def test_temperature_scaling_keeps_the_promise():
    """Temperatures fitted on other images of the same draw leave the candidates fixed for the certifying images."""
    population, profile = real_population()
    scaled = simulate_with_temperatures(population, profile, "confidence", 306, 100, EPSILON, DELTA, draws=250,
                                        num=100, seed=4)
    assert keeps_promise(scaled, scaled.risk_failures), scaled
    assert scaled.mean_flops_speedup > 1.0


def test_the_simulated_empirical_rule_is_todays_calibration():
    """The empirical rule of the simulation chooses what `calibrate` chooses from the same candidates."""
    population, profile = real_population()
    draw = population.split(306 / 576, seed=5)[0]
    sequences = candidate_sequences("confidence", 10, draw.exit_layers, draw.num_blocks)
    table = candidate_table(draw, profile, sequences)
    chosen = table.settings[empirical_choice(table, EPSILON)]
    today = calibrate(draw, profile, "confidence", max_accuracy_drop=EPSILON,
                      thresholds=[settings.thresholds[0] for settings in sequences[0]])
    assert today.settings == chosen

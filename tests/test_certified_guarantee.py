"""The certified thresholds keep their promise, tested statistically; today's empirical rule does not.

A population with every exit's logits is known in full: a synthetic multi-exit model, and the cached logits of a
real run (tests/fixtures/certification: the SDN model of the digits comparison on its 306 calibration and 270
evaluation images, and a weaker SDN model's for the several-sequences test). Each draw takes a calibration set from
it, each rule chooses an exit setting on that set, and the choice is measured on the whole population. The certified
rule promises that at most a share delta of the draws breaks the budget: the upper end of a 99% exact interval of
that share must be <= delta. The empirical rule must break its own promise (accuracy drop within the budget) in
clearly more than delta of the draws, or the test could not tell the rules apart. Every criterion, both threshold
paths, both bounds and both risks are tested so. With several patience sequences, on the weaker model's logits, the
same test also fails once the candidates are tested in the order of their calibration errors; `power` gives what a
number of draws can tell.
"""

from __future__ import annotations

import shlex
from bisect import bisect_right
from pathlib import Path

import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from utils.analysis import risk_simulation
from utils.analysis.calibration import calibrate
from utils.analysis.certification import candidate_sequences, candidate_table, sequence_count
from utils.analysis.risk_control import certified_prefixes
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


def weak_population():
    """The SDN logits of a weaker digits model (an earlier recipe), where more exits err near the thresholds: the
    population on which a break of the multiple-testing control shows (see the fixtures' README)."""
    return read_population(FIXTURES / "digits_sdn_weak_logits.pt"), read_profile(FIXTURES / "digits_sdn_flops.json")


def keeps_promise(outcome: RuleOutcome, failures: int) -> bool:
    """The test: with 99% confidence, at most a share delta of the draws breaks the budget."""
    return outcome.failure_interval(failures)[1] <= DELTA


def failure_bound(failures: int, draws: int, end: int) -> float:
    """The low (`end` 0) or high (1) end of the 99% interval that `keeps_promise` reads."""
    return RuleOutcome("", draws, 0, 0, 0.0, 0.0, 0.0, (0.0, 0.0)).failure_interval(failures)[end]


def power(draws: int, chance: float = 0.99) -> tuple[int, float, float]:
    """What `draws` draws can tell: the most failures that keep the promise, the true failure rate up to which a
    rule keeps it with probability `chance`, and the rate from which, with that probability, the low end of the
    interval lies above delta (a break shown beyond chance)."""
    counts = range(draws + 1)
    passing = bisect_right(counts, DELTA, key=lambda count: failure_bound(count, draws, 1)) - 1
    shown = bisect_right(counts, DELTA, key=lambda count: failure_bound(count, draws, 0))
    kept = brentq(lambda rate: binom.cdf(passing, draws, rate) - chance, 0.0, DELTA)
    broken = brentq(lambda rate: binom.sf(shown - 1, draws, rate) - chance, DELTA, 1.0)
    return passing, kept, broken


@pytest.mark.parametrize("draws, passing, kept, broken", [(500, 33, 0.044, 0.176), (1000, 75, 0.058, 0.151)])
def test_the_power_of_the_draws(draws, passing, kept, broken):
    """The figures of docs/certified-thresholds.md; a true failure rate of delta or more fails the test with
    probability >= 99.5% at every number of draws."""
    assert power(draws) == (passing, pytest.approx(kept, abs=5e-4), pytest.approx(broken, abs=5e-4))
    assert binom.sf(passing, draws, DELTA) >= 0.995


def assert_certified_holds_and_empirical_breaks(outcomes):
    certified, empirical = outcomes["certified"], outcomes["empirical"]
    assert keeps_promise(certified, certified.risk_failures), certified
    assert certified.drop_failures <= certified.risk_failures  # the drop is never above the certified risk
    # The same test fails for the empirical rule, on its own promise (the accuracy drop): it has power.
    assert not keeps_promise(empirical, empirical.drop_failures), empirical
    assert empirical.failure_interval(empirical.drop_failures)[0] > DELTA, empirical  # clearly, not by chance
    assert empirical.mean_flops_speedup > certified.mean_flops_speedup > 1.0  # the price of the guarantee
    for outcome in (certified, empirical):  # the spread of the speed-up over the draws brackets its mean
        low, high = outcome.flops_speedup_range
        assert low <= outcome.mean_flops_speedup <= high


@pytest.mark.parametrize("strategy", ["confidence", "patient_and_confident"])
def test_promise_holds_on_a_synthetic_population(strategy):
    population, profile = synthetic_population(4000, seed=1)
    outcomes = simulate(population, profile, strategy, 300, EPSILON, DELTA, draws=1000, seed=2)
    assert_certified_holds_and_empirical_breaks(outcomes)


@pytest.mark.parametrize("source, strategy, budget, options", [
    ("synthetic", "entropy", EPSILON, {}),
    ("synthetic", "confidence", EPSILON, {"path": "depth"}),
    ("synthetic", "confidence", 3.0, {"bound": "hoeffding_bentkus"}),  # at 1 point both bounds allow 0 errors
    ("synthetic", "confidence", 3.0, {"risk": "consistency"}),  # 1 point of disagreement certifies nothing here
    ("real", "patience", EPSILON, {}),
    ("real", "entropy", EPSILON, {"risk": "consistency"}),
], ids=["entropy", "depth", "hoeffding_bentkus", "consistency", "patience", "entropy-consistency"])
def test_promise_holds_for_every_criterion_path_bound_and_risk(source, strategy, budget, options):
    """The same test for the other criteria, the depth path, the Hoeffding-Bentkus bound and the consistency risk,
    with less work (500 draws, grids of 100 thresholds)."""
    population, profile = synthetic_population(4000, seed=1) if source == "synthetic" else real_population()
    samples = 300 if source == "synthetic" else 306
    outcomes = simulate(population, profile, strategy, samples, budget, DELTA, draws=500, num=100, seed=7, **options)
    assert_certified_holds_and_empirical_breaks(outcomes)


def test_promise_holds_on_a_real_runs_logits():
    population, profile = real_population()
    assert len(population) == 576 and population.num_exits == 11
    outcomes = simulate(population, profile, "confidence", 306, EPSILON, DELTA, draws=1000, seed=3)
    assert_certified_holds_and_empirical_breaks(outcomes)


def several_sequences(monkeypatch=None, order=None):
    """The simulation with eight patience counts of `patient_and_confident`, one sequence each (delta / 8 per
    sequence), at 1.5 points, on the weaker model's logits: 306 images certify at delta / 8 (1 point would need
    436). With `order`, the certified rule tests the candidates in that order instead (`monkeypatch` replaces it)."""
    if order is not None:
        monkeypatch.setattr(risk_simulation, "certified_indices", order)
    population, profile = weak_population()
    return simulate(population, profile, "patient_and_confident", 306, 1.5, DELTA, draws=500,
                    patience_values=range(1, 9), num=50, seed=6)


def test_promise_holds_with_several_patience_sequences():
    assert sequence_count("patient_and_confident", range(1, 9)) == 8
    assert_certified_holds_and_empirical_breaks(several_sequences())


def error_sorted_indices(table, epsilon, delta, risk="accuracy", bound="binomial"):
    """The break: every candidate of every sequence tested in one sequence sorted by its calibration errors, at
    delta, instead of in the fixed order with delta split across the sequences."""
    counts = table.losses(risk).sum(dim=1).tolist()
    order = sorted(range(len(counts)), key=lambda index: (counts[index], index))
    prefix = certified_prefixes([[counts[index] for index in order]], len(table.final_correct), epsilon, delta,
                                bound)[0]
    return order[:prefix]


def test_the_test_sees_candidates_ordered_by_their_errors(monkeypatch):
    """The draws of `test_promise_holds_with_several_patience_sequences`: the fixed order keeps the promise on them,
    an order that follows the calibration errors breaks it."""
    broken = several_sequences(monkeypatch, error_sorted_indices)["certified"]
    assert not keeps_promise(broken, broken.risk_failures), broken
    assert broken.risk_failures / broken.draws > DELTA, broken


def test_temperature_scaling_keeps_the_promise():
    """Temperatures fitted on other images of the same draw leave the candidates fixed for the certifying images."""
    population, profile = real_population()
    scaled = simulate_with_temperatures(population, profile, "confidence", 306, 100, EPSILON, DELTA, draws=500,
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


def test_the_usage_text_runs():
    """Every command of the module's usage text names files that exist and runs (with fewer draws)."""
    usage = risk_simulation.__doc__.split("Usage (from the repository root):")[1].replace("\\\n", " ")
    commands = [shlex.split(line)[3:] for line in usage.strip().splitlines()]
    assert len(commands) == 2
    root = Path(__file__).parent.parent
    for argv in commands:
        for flag in ("--logits", "--flops"):
            if flag in argv:
                path = root / argv[argv.index(flag) + 1]
                assert path.is_file(), argv
                argv[argv.index(flag) + 1] = str(path)
        summary = risk_simulation.main([*argv, "--draws", "20"])
        assert set(summary) == {"certified", "empirical"} and summary["certified"]["draws"] == 20

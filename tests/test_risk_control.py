"""The finite-sample bounds and the testing procedure of certified thresholds, against scipy and exact arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from scipy.special import rel_entr
from scipy.stats import binom, binomtest

from utils.analysis.risk_control import (
    budget_count,
    certified_prefixes,
    critical_errors,
    fixed_sequence,
    minimum_samples,
    p_value,
    upper_confidence_bound,
    within_budget,
)

CASES = [(0, 50, 0.05), (3, 50, 0.05), (0, 306, 0.01), (2, 306, 0.02), (11, 1000, 0.01), (40, 400, 0.1)]


def exact_binomial_tail(errors: int, samples: int, epsilon: Fraction) -> Fraction:
    """P(Binomial(samples, epsilon) <= errors) in exact rational arithmetic."""
    return sum(math.comb(samples, i) * epsilon**i * (1 - epsilon) ** (samples - i) for i in range(errors + 1))


@pytest.mark.parametrize("errors, samples, epsilon", CASES)
def test_binomial_p_value_is_the_exact_binomial_tail(errors, samples, epsilon):
    exact = exact_binomial_tail(errors, samples, Fraction(str(epsilon)))
    assert p_value(errors, samples, epsilon) == pytest.approx(float(exact), rel=1e-9)
    assert p_value(errors, samples, epsilon) == pytest.approx(binom.cdf(errors, samples, epsilon), rel=1e-12)


@pytest.mark.parametrize("errors, samples, epsilon", CASES)
@pytest.mark.parametrize("delta", [0.05, 0.1])
def test_clopper_pearson_bound_is_scipys_exact_interval(errors, samples, epsilon, delta):
    bound = upper_confidence_bound(errors, samples, delta)
    # A one-sided (1 - delta) bound is the upper end of the two-sided (1 - 2 delta) exact interval.
    assert bound == pytest.approx(binomtest(errors, samples).proportion_ci(1 - 2 * delta, method="exact").high,
                                  rel=1e-9)
    assert binom.cdf(errors, samples, bound) == pytest.approx(delta, rel=1e-6)
    assert (bound <= epsilon) == (errors <= critical_errors(samples, epsilon, delta))


@pytest.mark.parametrize("samples", [50, 230, 306, 1000])
@pytest.mark.parametrize("epsilon", [0.01, 0.05])
@pytest.mark.parametrize("delta", [0.05, 0.1])
@pytest.mark.parametrize("bound", ["binomial", "hoeffding_bentkus"])
def test_critical_errors_is_the_last_count_that_certifies(samples, epsilon, delta, bound):
    critical = critical_errors(samples, epsilon, delta, bound)
    if critical >= 0:
        assert p_value(critical, samples, epsilon, bound) <= delta
    assert p_value(critical + 1, samples, epsilon, bound) > delta
    if bound == "binomial" and critical >= 0:
        assert binom.cdf(critical, samples, epsilon) <= delta < binom.cdf(critical + 1, samples, epsilon)
    assert (critical >= 0) == ((1 - epsilon) ** samples <= delta)


@pytest.mark.parametrize("errors, samples, epsilon", CASES)
def test_hoeffding_bentkus_is_the_published_formula_and_never_tighter(errors, samples, epsilon):
    mean = errors / samples
    kl = rel_entr(min(mean, epsilon), epsilon) + rel_entr(1 - min(mean, epsilon), 1 - epsilon)
    expected = min(1.0, math.exp(-samples * kl), math.e * binom.cdf(math.ceil(samples * mean), samples, epsilon))
    value = p_value(errors, samples, epsilon, "hoeffding_bentkus")
    assert value == pytest.approx(expected, rel=1e-12)
    assert value >= p_value(errors, samples, epsilon)
    assert p_value(0, samples, epsilon, "hoeffding_bentkus") == pytest.approx((1 - epsilon) ** samples, rel=1e-12)
    bound = upper_confidence_bound(errors, samples, 0.1, "hoeffding_bentkus")
    assert bound >= upper_confidence_bound(errors, samples, 0.1)
    assert p_value(errors, samples, bound, "hoeffding_bentkus") == pytest.approx(0.1, rel=1e-6)


def test_minimum_samples_is_where_zero_errors_first_certify():
    assert minimum_samples(0.01, 0.1) == 230  # one point at delta = 0.1
    for epsilon, delta, sequences in [(0.01, 0.1, 1), (0.02, 0.05, 1), (0.01, 0.1, 11), (0.001, 0.01, 1)]:
        needed = minimum_samples(epsilon, delta, sequences)
        assert (1 - epsilon) ** needed <= delta / sequences < (1 - epsilon) ** (needed - 1)
        assert critical_errors(needed, epsilon, delta / sequences) == 0
        assert critical_errors(needed - 1, epsilon, delta / sequences) == -1
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        minimum_samples(0.0, 0.1)


def test_fixed_sequence_stops_at_the_first_failure():
    assert fixed_sequence([0, 1, 2, 5, 0, 0], critical=2) == 3  # the later zeros are never tested
    assert fixed_sequence([3, 0], critical=2) == 0
    assert fixed_sequence([0, 0], critical=-1) == 0
    assert fixed_sequence([1, 2], critical=2) == 2


def test_several_sequences_share_the_risk_level():
    samples = minimum_samples(0.01, 0.1)  # zero errors certify at delta, not at delta / 2
    assert certified_prefixes([[0, 0, 9]], samples, 0.01, 0.1) == [2]
    assert certified_prefixes([[0, 0, 9], [0, 5]], samples, 0.01, 0.1) == [0, 0]
    assert certified_prefixes([[0, 0, 9], [0, 5]], minimum_samples(0.01, 0.05), 0.01, 0.1) == [2, 1]


def test_budgets_are_decided_exactly():
    # 0.57 points of 10,000 images is 57 errors; in floats 0.57 * 10000 / 100 = 56.99999999999999.
    assert math.floor(0.57 * 10000 / 100) == 56 and budget_count(10000, 0.57) == 57
    assert within_budget(57, 10000, 0.57) and not within_budget(58, 10000, 0.57)
    assert within_budget(0, 7, 0.0) and not within_budget(1, 1000, 0.0)
    assert budget_count(306, 1.0) == 3

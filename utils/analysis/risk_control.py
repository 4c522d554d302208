"""Finite-sample risk control for choosing exit settings (Learn-then-Test, Angelopoulos et al. 2021; applied to early
exit by Jazbec, Timans et al., "Fast yet Safe: Early-Exiting with Risk Control", NeurIPS 2024).

Each candidate setting is a hypothesis test of H0: "its risk (the share of images it gets wrong, in the sense of
`utils.analysis.certification`) is > epsilon". On n calibration images with k errors the p-value is
- `binomial`: P(Binomial(n, epsilon) <= k), exact for 0/1 losses (its inverse is the Clopper-Pearson bound);
- `hoeffding_bentkus`: min(exp(-n h(k/n, epsilon)), e * P(Binomial(n, epsilon) <= k)) with h the Bernoulli
  divergence (Bates et al. 2021), made for losses in [0, 1]; never smaller than the binomial one, so for these
  0/1 losses it only certifies less (it is here to compare with the published risk-control work).
H0 is rejected (the candidate certified) when p <= delta. Since a p-value grows with k, that is the same as
k <= a critical count, so every decision below compares integer error counts with one integer.

Candidates given as one sequence are tested in that order, each at level delta, until the first one that is not
certified (fixed-sequence testing); several sequences share delta evenly (Bonferroni). Either way, with
probability >= 1 - delta over the calibration draw, every certified candidate has risk <= epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

from scipy.special import rel_entr
from scipy.stats import beta, binom

from utils.arguments.analysis import RISK_BOUNDS as BOUNDS


def check_levels(epsilon: float, delta: float) -> None:
    """Raise a ValueError unless 0 < epsilon < 1 and 0 < delta < 1 (both fractions)."""
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"The risk budget epsilon={epsilon} must lie strictly between 0 and 1 (a fraction).")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"The risk level delta={delta} must lie strictly between 0 and 1, e.g. 0.1.")


def p_value(errors: int, samples: int, epsilon: float, bound: str = "binomial") -> float:
    """p-value of H0 "risk > epsilon" after `errors` errors on `samples` images (module docstring)."""
    if bound not in BOUNDS:
        raise ValueError(f"`bound`={bound!r} is not one of {', '.join(BOUNDS)}.")
    if not 0 <= errors <= samples:
        raise ValueError(f"{errors} errors on {samples} samples: the count must lie between 0 and the sample count.")
    binomial = float(binom.cdf(errors, samples, epsilon))
    if bound == "binomial":
        return binomial
    mean = errors / samples
    if mean >= epsilon:
        return 1.0
    divergence = float(rel_entr(mean, epsilon) + rel_entr(1.0 - mean, 1.0 - epsilon))  # Bernoulli KL
    # Never below the exact binomial p-value, which it bounds (they are equal at zero errors up to float rounding).
    return max(binomial, min(1.0, math.exp(-samples * divergence), math.e * binomial))


@lru_cache(maxsize=256)  # simulations ask for the same few values many times
def critical_errors(samples: int, epsilon: float, delta: float, bound: str = "binomial") -> int:
    """The most errors on `samples` images that still certify risk <= epsilon at level delta; -1 when even zero
    errors do not (the calibration set is too small for this budget)."""
    check_levels(epsilon, delta)
    if samples < 1:
        return -1
    low, high = -1, samples  # p_value(low) <= delta (or low = -1) < p_value(high); p_value(samples) = 1 > delta
    while high - low > 1:
        middle = (low + high) // 2
        if p_value(middle, samples, epsilon, bound) <= delta:
            low = middle
        else:
            high = middle
    return low


def upper_confidence_bound(errors: int, samples: int, delta: float, bound: str = "binomial") -> float:
    """The smallest risk epsilon that `errors` errors on `samples` images certify at level delta: the one-sided
    (1 - delta) upper confidence bound of the risk (Clopper-Pearson for `binomial`)."""
    if errors >= samples:
        return 1.0
    if bound == "binomial":
        return float(beta.ppf(1.0 - delta, errors + 1, samples - errors))
    return smallest_passing_risk(errors, samples, errors / samples, 1.0, delta, bound)


def smallest_passing_risk(errors: int, samples: int, low: float, high: float, delta: float, bound: str) -> float:
    """The smallest risk level epsilon in (`low`, `high`] at which `errors` errors on `samples` images pass the test
    at `delta`, by bisection to float precision (the p-value is monotone in epsilon); `low` must fail, `high` pass."""
    for _ in range(60):
        middle = (low + high) / 2
        if p_value(errors, samples, middle, bound) <= delta:
            high = middle
        else:
            low = middle
    return high


def lower_confidence_bound(errors: int, samples: int, alpha: float) -> float:
    """The one-sided (1 - alpha) Clopper-Pearson lower confidence bound of a risk after `errors` errors on `samples`
    images (0 for no errors)."""
    return 0.0 if errors == 0 else float(beta.ppf(alpha, errors, samples - errors + 1))


def minimum_samples(epsilon: float, delta: float, sequences: int = 1) -> int:
    """The fewest calibration images on which zero errors certify epsilon: (1 - epsilon)^n <= delta / sequences
    (the same for both bounds)."""
    check_levels(epsilon, delta)
    level = delta / sequences
    samples = max(1, math.ceil(math.log(level) / math.log1p(-epsilon)))
    while (1.0 - epsilon) ** samples > level:  # guard the float logarithms at the boundary
        samples += 1
    while samples > 1 and (1.0 - epsilon) ** (samples - 1) <= level:
        samples -= 1
    return samples


def budget_count(samples: int, points: float) -> int:
    """The most errors out of `samples` that stay within a budget of `points` accuracy points, decided exactly
    (the budget read as the decimal it is written as): floor(points * samples / 100)."""
    return math.floor(Fraction(str(points)) * samples / 100)


def within_budget(errors: int, samples: int, points: float) -> bool:
    """errors / samples <= points / 100, decided exactly (`budget_count`)."""
    return errors <= budget_count(samples, points)


def fixed_sequence(errors: Sequence[int], critical: int) -> int:
    """How many leading candidates are certified: test in order, stop at the first with more than `critical`
    errors."""
    for index, count in enumerate(errors):
        if count > critical:
            return index
    return len(errors)


def certified_prefixes(errors: Sequence[Sequence[int]], samples: int, epsilon: float, delta: float,
                       bound: str = "binomial") -> list[int]:
    """For each candidate sequence (error counts in test order), how many leading candidates are certified, each
    sequence tested by `fixed_sequence` at delta / (number of sequences) (Bonferroni)."""
    critical = critical_errors(samples, epsilon, delta / len(errors), bound)
    return [fixed_sequence(counts, critical) for counts in errors]

"""Certified exit thresholds: an accuracy budget that holds on new images with a chosen probability.

`certify` picks one criterion's exit setting so that, with probability at least 1 - delta over the draw of the
calibration images, the early exit's risk on new images from the same distribution is at most epsilon. The risk of
one image (`RISKS`):
- `accuracy`: the early-exit answer is wrong where the final classifier's answer is right. The accuracy drop against
  the final classifier is at most this risk, so it is certified too.
- `consistency`: the early-exit answer differs from the final classifier's (needs no labels; it bounds the other).

The candidates are fixed before any data is seen (`candidate_sequences`): for threshold criteria a grid over the
criterion's score range, one threshold shared by every exit or per-exit thresholds along a fixed path (`depth`:
exit e allows the fraction layer_e / num_blocks of the shared step, so shallow exits are stricter); for `patience`
the counts E + 1 (never leaves) down to 1; for `patient_and_confident` one threshold sequence per patience count.
Every sequence starts with a setting under which no image leaves early and runs to the most aggressive one; it
is tested in that order and the fastest certified candidate (by FLOPs on the calibration images) is chosen
(`utils.analysis.risk_control`). The certificate reports the bound at the critical count, which holds whatever was
chosen (`selection_safe_bound`); `record_certification` lists the certifications made into one output directory and
warns on a second one, since keeping the best of several tries on one calibration split voids the guarantee. The
valid way to try several budgets is `certify_budgets`: they share the risk level (Bonferroni), so every one of them
holds together with the others and any may be kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.criteria import get_criterion
from models.exit_settings import ExitSettings
from utils.analysis.calibration import Calibration, compact_thresholds
from utils.analysis.flops import FlopsProfile
from utils.analysis.risk_control import (
    certified_prefixes,
    check_levels,
    critical_errors,
    minimum_samples,
    p_value,
    smallest_passing_risk,
    upper_confidence_bound,
)
from utils.analysis.sweep import CachedLogits, evaluate_settings, exit_decisions
from utils.arguments.analysis import RISK_NAMES, RISKS, THRESHOLD_PATHS

logger = logging.getLogger(__name__)

GRID_SIZE = 300  # candidates per threshold sequence; fixed-sequence testing pays nothing for more


def range_fractions(num: int = GRID_SIZE) -> list[float]:
    """About `num` fractions of the score range from 0 to 1, fixed before any data: half spaced evenly in log scale
    from 1e-6 (fine steps where the exits are almost certain), half evenly (steps of 2 / num over the whole range,
    where a small model's scores often lie), and 0."""
    logarithmic = np.logspace(-6.0, 0.0, num // 2)
    even = np.linspace(0.0, 1.0, num - num // 2)
    return sorted({0.0, *logarithmic.tolist(), *even.tolist()})


def sequence_count(strategy: str, patience_values: Sequence[int] | None) -> int:
    """How many candidate sequences `candidate_sequences` makes (they share the risk level, Bonferroni)."""
    return len(patience_values or [None]) if get_criterion(strategy).rule == "streak" else 1


def candidate_sequences(strategy: str, num_classes: int, exit_layers: Sequence[int], num_blocks: int,
                        path: str = "shared", patience_values: Sequence[int] | None = None,
                        num: int = GRID_SIZE) -> list[list[ExitSettings]]:
    """The candidate settings of one criterion, fixed before any data: sequences ordered from "no image leaves
    early" to the most aggressive setting (module docstring).

    Args:
        strategy: exit criterion.
        num_classes, exit_layers, num_blocks: what the model is (the grid depends on nothing else).
        path: `shared` (one threshold for every exit) or `depth` (per-exit thresholds along a fixed path).
        patience_values: the patience counts of `patient_and_confident`, one sequence each (default: the
            criterion's default count).
        num: thresholds per sequence.
    """
    criterion = get_criterion(strategy, field="strategy")
    if path not in THRESHOLD_PATHS:
        raise ValueError(f"`path`={path!r} must be one of {', '.join(THRESHOLD_PATHS)}.")
    num_exits = len(exit_layers)
    if criterion.rule == "agreement":
        return [[ExitSettings(strategy, (0.0,) * num_exits, patience) for patience in range(num_exits + 1, 0, -1)]]
    fractions = range_fractions(num)
    scales = [1.0] * num_exits if path == "shared" else [layer / num_blocks for layer in exit_layers]
    per_exit = [criterion.fixed_thresholds(num_classes, [f * scale for f in fractions]) for scale in scales]
    thresholds = [tuple(values) for values in zip(*per_exit)]
    counts = [1] if criterion.rule == "threshold" else list(patience_values or [criterion.default_patience])
    return [[ExitSettings(strategy, values, patience) for values in thresholds] for patience in counts]


@dataclass
class CandidateTable:
    """Per-image outcomes of every candidate (sequences concatenated in order) on a set of images.

    Attributes:
        sequences: the candidates, as `candidate_sequences` made them.
        early_correct: (C, N) bool, the early-exit answer is the label.
        agrees: (C, N) bool, the early-exit answer is the final classifier's.
        final_correct: (N,) bool, the final classifier's answer is the label.
        flops: (C, N) float64, FLOPs each image costs.
    """

    sequences: list[list[ExitSettings]]
    early_correct: torch.Tensor
    agrees: torch.Tensor
    final_correct: torch.Tensor
    flops: torch.Tensor

    @property
    def settings(self) -> list[ExitSettings]:
        return [settings for sequence in self.sequences for settings in sequence]

    def select(self, indices: torch.Tensor) -> CandidateTable:
        """The same candidates on the images at `indices` (repeats allowed: draws with replacement)."""
        return CandidateTable(self.sequences, self.early_correct.index_select(1, indices),
                              self.agrees.index_select(1, indices), self.final_correct[indices],
                              self.flops.index_select(1, indices))

    def losses(self, risk: str) -> torch.Tensor:
        """(C, N) bool: the images each candidate gets wrong under `risk` (module docstring)."""
        if risk == "accuracy":
            return ~self.early_correct & self.final_correct
        if risk == "consistency":
            return ~self.agrees
        raise ValueError(f"`risk`={risk!r} must be one of {', '.join(RISKS)}.")

    def errors(self, risk: str) -> list[list[int]]:
        """Integer error counts of each candidate, grouped by sequence."""
        counts = self.losses(risk).sum(dim=1).tolist()
        bounds = np.cumsum([0] + [len(sequence) for sequence in self.sequences])
        return [counts[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def sequence_exits(cache: CachedLogits, sequence: Sequence[ExitSettings]) -> torch.Tensor:
    """(C, N) exit index of every candidate of a sequence on every cached image: 0..E-1 an exit, E the final
    classifier.

    The criterion's own `step` decides, as in `models.exiting.decide_from_logits`; candidates that share a patience
    count go through it at once, their thresholds as a (C, 1) float32 column (the precision the online comparison
    casts a threshold to), so every image's score is computed once per exit rather than once per candidate.
    """
    criterion = get_criterion(sequence[0].strategy)
    counts = {settings.patience for settings in sequence}
    if not criterion.uses_threshold or len(counts) > 1:
        return torch.stack([exit_decisions(cache, settings)[1] for settings in sequence])
    device = cache.final_logits.device
    thresholds = torch.tensor([settings.thresholds for settings in sequence], dtype=torch.float32, device=device)
    exit_index = torch.full((len(sequence), len(cache)), cache.num_exits, dtype=torch.long, device=device)
    state = criterion.initial_state(len(cache), device)
    for index, logits in enumerate(cache.exit_logits):
        leaving, state = criterion.step(logits, thresholds[:, index:index + 1], sequence[0].patience, state)
        exit_index = torch.where(leaving & (exit_index == cache.num_exits), index, exit_index)
    return exit_index


def candidate_table(cache: CachedLogits, profile: FlopsProfile, sequences: list[list[ExitSettings]]) -> CandidateTable:
    """Every candidate's exit decisions on the cached logits (exactly the online decisions)."""
    exit_index = torch.cat([sequence_exits(cache, sequence) for sequence in sequences])
    answers = torch.cat([cache.exit_logits.argmax(dim=-1), cache.final_logits.argmax(dim=-1)[None]])  # (E + 1, N)
    early = answers.gather(0, exit_index)
    final = answers[-1]
    return CandidateTable(sequences, early == cache.labels, early == final, final == cache.labels,
                          profile.flops_at_exits(exit_index.reshape(-1)).reshape(exit_index.shape))


def certified_indices(table: CandidateTable, epsilon: float, delta: float, risk: str = "accuracy",
                      bound: str = "binomial") -> list[int]:
    """Indices (into `table.settings`) of the candidates certified on the table's images."""
    prefixes = certified_prefixes(table.errors(risk), len(table.final_correct), epsilon, delta, bound)
    starts = np.cumsum([0] + [len(sequence) for sequence in table.sequences])
    return [int(start) + offset for start, prefix in zip(starts, prefixes) for offset in range(prefix)]


def fastest(table: CandidateTable, indices: Sequence[int]) -> int | None:
    """The candidate among `indices` with the fewest FLOPs on the table's images (the earliest among equals);
    None for no indices."""
    average_flops = table.flops.mean(dim=1).tolist()
    return min(indices, key=lambda index: (average_flops[index], index), default=None)


def too_small_message(samples: int, max_accuracy_drop: float, risk_level: float, sequences: int = 1,
                      budgets: int = 1) -> str:
    """Why `samples` calibration images cannot certify the budget (one of `budgets` sharing the risk level, with
    `sequences` candidate sequences each), and what to change."""
    shares = sequences * budgets
    needed = minimum_samples(max_accuracy_drop / 100.0, risk_level, shares)
    best = 100.0 * upper_confidence_bound(0, samples, risk_level / shares) if samples else 100.0
    split = " and ".join(f"{count} {name}" for count, name in ((budgets, "budgets"), (sequences, "sequences"))
                         if count > 1)
    shared = f" / {shares}" if shares > 1 else ""
    fewer = ", or certify fewer --extra_budgets" if budgets > 1 else ""
    return (f"The calibration split has {samples} images, too few to certify an accuracy drop of at most "
            f"{max_accuracy_drop:g} points at risk level {risk_level:g}: even zero errors on them certify no less "
            f"than {best:.2f} points ((1 - epsilon)^n <= delta{shared} needs n >= {needed}"
            f"{', delta shared by ' + split if split else ''}). Hold out more images (--calibration_split), or allow "
            f"a larger --max_accuracy_drop or --risk_level{fewer}.")


def check_sample_count(samples: int, budgets: Sequence[float], risk_level: float, sequences: int = 1) -> None:
    """Raise a ValueError (`too_small_message`) unless zero errors on `samples` images certify every one of
    `budgets` (points) at its share of `risk_level`."""
    for budget in budgets:
        if samples < minimum_samples(budget / 100.0, risk_level, sequences * len(budgets)):
            raise ValueError(too_small_message(samples, budget, risk_level, sequences, len(budgets)))


@dataclass(frozen=True)
class Certificate:
    """What a certification promises and what it saw.

    Attributes:
        max_accuracy_drop: epsilon in accuracy points; risk_level: delta.
        risk, risk_bound, threshold_path: how it was certified (`RISKS`, `risk_control.BOUNDS`, `THRESHOLD_PATHS`).
        calibration_samples: images that certified (n); calibration_errors: the chosen setting's errors on them.
        critical_errors: the most errors a candidate could have and be certified.
        certified_risk_bound: the risk certified for the chosen setting, in points: the (1 - delta / sequences)
            upper confidence bound at `critical_errors` (`selection_safe_bound`), at most the budget. The bound at
            the chosen setting's own error count is not reported: it claims too much once the setting was chosen
            for passing (docs/certified-thresholds.md).
        candidates, certified_candidates, sequences: the size of the search and how much of it was certified.
        budgets: how many budgets shared `risk_level` (`certify_budgets`); each was tested at
            risk_level / (budgets * sequences).
    """

    max_accuracy_drop: float
    risk_level: float
    risk: str
    risk_bound: str
    threshold_path: str
    calibration_samples: int
    calibration_errors: int
    critical_errors: int
    certified_risk_bound: float
    candidates: int
    certified_candidates: int
    sequences: int
    budgets: int = 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def certify(cache: CachedLogits, profile: FlopsProfile, strategy: str, max_accuracy_drop: float, risk_level: float,
            *, risk: str = "accuracy", bound: str = "binomial", path: str = "shared",
            patience_values: Sequence[int] | None = None, num: int = GRID_SIZE, budgets: int = 1) -> Calibration:
    """Choose `strategy`'s setting with a certified accuracy budget on the cached calibration images.

    Args:
        cache: logits of calibration images no stage trained on, drawn like the images the model will see.
        profile: the model's FLOPs (the choice among certified settings, and the expected speed-up).
        strategy: exit criterion.
        max_accuracy_drop: epsilon, in accuracy points (1.0 = one point).
        risk_level: delta, the probability over the calibration draw that the promise fails (e.g. 0.1).
        risk, bound, path, patience_values, num: see `RISKS`, `risk_control.BOUNDS`, `candidate_sequences`.
        budgets: how many budgets share `risk_level` (`certify_budgets`); this one is tested at its share.

    Returns:
        the chosen setting, with its certificate in `details`.

    Raises:
        ValueError: when the calibration images are too few to certify the budget at all (`too_small_message`).
    """
    epsilon = max_accuracy_drop / 100.0
    check_levels(epsilon, risk_level)
    sequences = candidate_sequences(strategy, cache.final_logits.shape[-1], cache.exit_layers, cache.num_blocks,
                                    path, patience_values, num)
    if len(cache) < minimum_samples(epsilon, risk_level, budgets * len(sequences)):
        raise ValueError(too_small_message(len(cache), max_accuracy_drop, risk_level, len(sequences), budgets))
    table = candidate_table(cache, profile, sequences)
    certified = certified_indices(table, epsilon, risk_level / budgets, risk, bound)
    chosen = fastest(table, certified)
    if chosen is None:
        raise ValueError(too_small_message(len(cache), max_accuracy_drop, risk_level, len(sequences), budgets))
    errors = [count for counts in table.errors(risk) for count in counts]
    level = risk_level / budgets / len(sequences)
    critical = critical_errors(len(cache), epsilon, level, bound)
    certificate = Certificate(
        max_accuracy_drop=max_accuracy_drop, risk_level=risk_level, risk=risk, risk_bound=bound, threshold_path=path,
        calibration_samples=len(cache), calibration_errors=errors[chosen], critical_errors=critical,
        certified_risk_bound=100.0 * selection_safe_bound(len(cache), epsilon, level, bound),
        candidates=len(errors), certified_candidates=len(certified), sequences=len(sequences), budgets=budgets)
    point = evaluate_settings(cache, table.settings[chosen], profile)
    logger.info("Certified %s on %d images (%s, %s bound): %s, %d errors (at most %d certify): risk <= %.3f points "
                "(budget %g) at %s; expected FLOPs speed-up %.3f.", strategy, len(cache), RISK_NAMES[risk],
                bound, get_criterion(strategy).describe(compact_thresholds(point.thresholds), point.patience),
                certificate.calibration_errors, certificate.critical_errors, certificate.certified_risk_bound,
                max_accuracy_drop, shared_level(risk_level, budgets), point.flops_speedup)
    return Calibration(point=point, final_accuracy=cache.final_accuracy(),
                       target=certified_target(max_accuracy_drop, risk_level, risk, budgets), met=True,
                       max_accuracy_drop=max_accuracy_drop, details={"certified": True, **certificate.as_dict()})


def selection_safe_bound(samples: int, epsilon: float, delta: float, bound: str = "binomial") -> float:
    """The smallest budget at which the test makes the very decisions it made at `epsilon`: the (1 - delta) upper
    confidence bound at the critical count, at most `epsilon`.

    It depends on no error count, so it holds for whichever candidate was certified and chosen; the bound at the
    chosen candidate's own count does not (it is biased low by the choice). Bisection from the closed-form bound
    to `epsilon` keeps the figure on the side where `p_value` itself passes, despite float rounding."""
    critical = critical_errors(samples, epsilon, delta, bound)
    low, high = min(epsilon, upper_confidence_bound(critical, samples, delta, bound)), epsilon
    if p_value(critical, samples, low, bound) <= delta:
        return low
    return smallest_passing_risk(critical, samples, low, high, delta, bound)


def certify_budgets(cache: CachedLogits, profile: FlopsProfile, strategy: str, budgets: Sequence[float],
                    risk_level: float, **options: Any) -> Calibration:
    """Certify several accuracy budgets (points) on one calibration split: each at risk_level / len(budgets)
    (Bonferroni), so with probability at least 1 - risk_level every one holds, and any may be kept by any rule.

    Returns the first budget's calibration (the setting the model keeps), the others in its `others`, in order.
    `options` are `certify`'s."""
    if not budgets or len(set(budgets)) < len(budgets):
        raise ValueError(f"Budgets {list(budgets)} must be one or more different values (accuracy points).")
    first, *others = [certify(cache, profile, strategy, budget, risk_level, budgets=len(budgets), **options)
                      for budget in budgets]
    return replace(first, others=tuple(others))


def certified_target(max_accuracy_drop: float, risk_level: float, risk: str, budgets: int = 1) -> str:
    """What a certification promises, in words, naming the risk it certified (and the budgets sharing the level)."""
    if risk == "consistency":
        return (f"certified disagreement with the final classifier <= {max_accuracy_drop:g} points (so accuracy drop "
                f"too) at {shared_level(risk_level, budgets)}")
    return f"certified accuracy drop <= {max_accuracy_drop:g} points at {shared_level(risk_level, budgets)}"


def shared_level(risk_level: float, budgets: int) -> str:
    """The risk level in words, with the budgets that share it."""
    return f"risk level {risk_level:g}" + (f" shared by {budgets} budgets" if budgets > 1 else "")


CERTIFICATIONS_FILE = "certifications.json"  # every certification made into one output directory
TRY_FIELDS = ("max_accuracy_drop", "risk_level", "risk", "risk_bound", "threshold_path", "sequences", "budgets",
              "calibration_samples")


def record_certification(output_dir: str | Path, calibration: Calibration) -> None:
    """Add a certification to the record in `output_dir`, warning when other ones were made there before.

    Keeping the best of several tries (budgets, criteria, bounds, risk levels) on one calibration split voids the
    guarantee, so the warning says how to choose validly. A repeat of the same certification (a resumed run) is no
    new try. Uncertified calibrations are not recorded."""
    if not calibration.details.get("certified"):
        return
    path = Path(output_dir) / CERTIFICATIONS_FILE
    made = json.loads(path.read_text()) if path.is_file() else []
    entry = {"strategy": calibration.settings.strategy, **{key: calibration.details[key] for key in TRY_FIELDS},
             "other_budgets": [other.max_accuracy_drop for other in calibration.others]}
    if entry in made:
        return
    made.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(made, indent=2) + "\n")
    if len(made) > 1:
        logger.warning(several_tries_message(made, path))


def several_tries_message(made: list[dict[str, Any]], path: Path) -> str:
    """Why choosing among the certifications in `made` voids the guarantee, and the valid way."""
    tries = "; ".join(f"{entry['strategy']}, {budgets_text(entry)} points, {entry['risk']} risk, "
                      f"{entry['risk_bound']} bound, risk level {entry['risk_level']:g}" for entry in made)
    return (f"{len(made)} different certifications were made into {path.parent} (recorded in {path.name}): {tries}. "
            "Keeping the best of several tries on one calibration split voids the guarantee: each holds at its risk "
            "level only if it would have been kept whatever the calibration images showed. To choose among k tries "
            "validly, run every one of them at --risk_level DELTA / k (Bonferroni; several budgets of one criterion "
            "in one run: --max_accuracy_drop with --extra_budgets); then all hold together with probability >= "
            "1 - DELTA and any of them may be kept. Another output directory does not help while the calibration "
            "split is the same.")


def budgets_text(entry: dict[str, Any]) -> str:
    """The budget of a recorded certification, with the ones certified beside it."""
    others = entry.get("other_budgets") or []
    return f"{entry['max_accuracy_drop']:g}" + (f" (with {', '.join(f'{b:g}' for b in others)})" if others else "")

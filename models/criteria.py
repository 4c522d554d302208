"""Exit criteria: the rules that let a sample leave at an exit. Each one is defined once, here, and everything else
(the configurations' checks, the batched runner, threshold sweeps, calibration, reports, checkpoint conversion)
asks this registry.

A criterion is a small `ExitCriterion`: a score of an exit's logits and whether lower or higher scores leave, the
rule that turns scores into decisions (`threshold`: the score passes at this exit; `agreement`: `patience` exits in
a row predict the same class; `streak`: `patience` exits in a row pass the threshold), the valid threshold range,
its defaults and how to describe a setting in words. Scores are computed in float32 with numerically stable
formulas (log-softmax), so decisions do not depend on the logits' precision or size.

Adding a criterion is one call:

    register_criterion(ExitCriterion(name="margin", rule="threshold", score=top_two_margin, score_name="margin",
                                     leaves_below=False, threshold_range=(0.0, 1.0), default_threshold=0.5))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Per-sample state of the rules that count exits: `count` (consecutive exits that agreed or passed) and `previous`
# (the class predicted at the exit before; -1 before the first exit).
State = dict[str, torch.Tensor]
RULES = ("threshold", "agreement", "streak")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Natural-log entropy of softmax(logits) per row, in float32: -sum(p * log p) with log p = log_softmax.

    Equal to the original code's log(sum e^x) - sum(x e^x) / sum(e^x), but finite for logits of any size and
    precision (e^x overflows above ~88 in float32 and ~11 in float16).
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Top softmax probability per row, in float32."""
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


def entropy_range(num_classes: int) -> tuple[float, float]:
    """Entropy of K-class softmax outputs lies in [0, log K]."""
    return 0.0, math.log(num_classes)


def confidence_range(num_classes: int) -> tuple[float, float]:
    """The top probability of K-class softmax outputs lies in [1/K, 1]."""
    return 1.0 / num_classes, 1.0


@dataclass(frozen=True)
class ExitCriterion:
    """One exit criterion.

    Attributes:
        name: the `exit_strategy` value that selects it.
        rule: `threshold`, `agreement` or `streak` (module docstring).
        score: (B, K) logits -> (B,) float32 score; None for `agreement`, which compares predicted classes.
        score_name: the score in words, e.g. "entropy".
        leaves_below: True when scores below the threshold pass (entropy), False when scores above it do.
        threshold_range: (lowest, highest) valid threshold; None means unbounded.
        default_threshold: the threshold when a configuration gives none (backbones may have their own defaults).
        default_patience: the patience count when a configuration gives none (`agreement` and `streak`).
        score_range: number of classes K -> (lowest, highest) score K-class logits can have; None when unknown
            (such a criterion has no data-free threshold grid, `fixed_thresholds`).
    """

    name: str
    rule: str
    score: Callable[[torch.Tensor], torch.Tensor] | None = None
    score_name: str = ""
    leaves_below: bool = False
    threshold_range: tuple[float | None, float | None] = (None, None)
    default_threshold: float = 0.0
    default_patience: int = 1
    score_range: Callable[[int], tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"Criterion {self.name!r}: rule {self.rule!r} is not one of {', '.join(RULES)}.")
        if (self.score is None) != (self.rule == "agreement"):
            raise ValueError(f"Criterion {self.name!r}: the {self.rule!r} rule needs a score exactly when it is not "
                             "'agreement'.")

    @property
    def uses_threshold(self) -> bool:
        return self.rule != "agreement"

    @property
    def uses_patience(self) -> bool:
        return self.rule != "threshold"

    def check_thresholds(self, values: Sequence[float]) -> None:
        """Raise a ValueError naming the valid range when a threshold lies outside it."""
        low, high = self.threshold_range
        if any((low is not None and v < low) or (high is not None and v > high) for v in values):
            bounds = (f"between {low:g} and {high:g}" if low is not None and high is not None
                      else f">= {low:g}" if low is not None else f"<= {high:g}")
            raise ValueError(f"`threshold`={list(values)} is out of range: {self.name} thresholds are {bounds}.")

    def passes(self, logits: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
        """(B,) bool: whether each row's score passes `threshold` (strictly, as the original code)."""
        score = self.score(logits)
        return score < threshold if self.leaves_below else score > threshold

    def initial_state(self, batch_size: int, device: torch.device | str) -> State:
        if self.rule == "threshold":
            return {}  # nothing to remember between exits
        return {"count": torch.zeros(batch_size, dtype=torch.long, device=device),
                "previous": torch.full((batch_size,), -1, dtype=torch.long, device=device)}

    def step(self, logits: torch.Tensor, threshold: float | torch.Tensor, patience: int,
             state: State) -> tuple[torch.Tensor, State]:
        """Decide at one exit, for the rows still running. Returns (leave mask (B,), the rows' new state)."""
        if self.rule == "threshold":
            return self.passes(logits, threshold), state
        if self.rule == "agreement":
            # The first exit starts the count at 1; each following exit that agrees with the one before adds 1.
            prediction = logits.argmax(dim=-1)
            count = torch.where(prediction == state["previous"], state["count"] + 1, torch.ones_like(state["count"]))
            return count == patience, {"count": count, "previous": prediction}
        count = torch.where(self.passes(logits, threshold), state["count"] + 1, torch.zeros_like(state["count"]))
        return count == patience, {"count": count, "previous": state["previous"]}

    def threshold_grid(self, exit_logits: torch.Tensor, num: int = 41) -> list[float]:
        """Thresholds to sweep: `num` quantiles of the scores of `exit_logits` (E, N, K) over every exit and sample,
        plus a value no sample passes and one every sample passes, kept inside the valid range. A criterion
        without a threshold gives [0.0]."""
        if not self.uses_threshold or exit_logits.numel() == 0:
            return [0.0]
        scores = self.score(exit_logits.reshape(-1, exit_logits.shape[-1])).double()
        low, high = self.threshold_range
        smallest, largest = float(scores.min()), float(scores.max())
        # Just beyond the extreme scores, also after the float32 rounding of the comparison; a range bound when
        # it already lies beyond them (confidence > 0 lets every sample pass, entropy < 0 none).
        margin = max(abs(smallest), abs(largest)) * 1e-5 + 1e-6
        below = low if low is not None and low < smallest else smallest - margin
        above = high if high is not None and high > largest else largest + margin
        ends = [below, above]
        quantiles = np.quantile(scores.numpy(), np.linspace(0.0, 1.0, num))
        values = np.clip(np.concatenate([quantiles, ends]), low, high)
        return sorted({float(value) for value in values})

    def fixed_thresholds(self, num_classes: int, fractions: Sequence[float]) -> list[float]:
        """Thresholds chosen without looking at any data, one per fraction f of the score range walked from the end
        that never leaves: f = 0 is the bound no score passes (strict comparison: confidence > 1, entropy < 0), f = 1
        the other end of the range (every sample but an exactly uniform one passes)."""
        if self.score_range is None:
            raise ValueError(f"Criterion {self.name!r} has no `score_range`, so it has no data-free threshold grid.")
        low, high = self.score_range(num_classes)
        return [low + f * (high - low) if self.leaves_below else high - f * (high - low) for f in fractions]

    def describe(self, threshold: float | Sequence[float], patience: int) -> str:
        """A setting in words, e.g. "confidence > 0.8" or "2 exits in a row with entropy < 0.5"."""
        value = f"{threshold:.3g}" if isinstance(threshold, (int, float)) else str(list(threshold))
        if self.rule == "agreement":
            return f"{patience} exits in a row agree"
        passing = f"{self.score_name} {'<' if self.leaves_below else '>'} {value}"
        return passing if self.rule == "threshold" else f"{patience} exits in a row with {passing}"


EXIT_CRITERIA: dict[str, ExitCriterion] = {}


def register_criterion(criterion: ExitCriterion) -> ExitCriterion:
    """Add (or replace) a criterion; it is then accepted as `exit_strategy` everywhere."""
    EXIT_CRITERIA[criterion.name] = criterion
    return criterion


def unregister_criterion(name: str) -> None:
    """Remove a criterion added with `register_criterion`."""
    EXIT_CRITERIA.pop(name, None)


def get_criterion(name: str, field: str = "exit_strategy") -> ExitCriterion:
    """The criterion called `name`; a ValueError naming `field` and the registered names otherwise."""
    if name not in EXIT_CRITERIA:
        raise ValueError(f"`{field}`={name!r} is not supported; allowed values: {', '.join(EXIT_CRITERIA)}.")
    return EXIT_CRITERIA[name]


# The four criteria of the original code, with its default values for DeiT/ViT (Swin overrides some defaults).
register_criterion(ExitCriterion(name="entropy", rule="threshold", score=entropy, score_name="entropy",
                                 leaves_below=True, threshold_range=(0.0, None), default_threshold=0.6,
                                 score_range=entropy_range))
register_criterion(ExitCriterion(name="confidence", rule="threshold", score=confidence, score_name="confidence",
                                 leaves_below=False, threshold_range=(0.0, 1.0), default_threshold=0.865,
                                 score_range=confidence_range))
register_criterion(ExitCriterion(name="patience", rule="agreement", default_patience=7))
register_criterion(ExitCriterion(name="patient_and_confident", rule="streak", score=entropy, score_name="entropy",
                                 leaves_below=True, threshold_range=(0.0, None), default_threshold=0.5,
                                 default_patience=2, score_range=entropy_range))

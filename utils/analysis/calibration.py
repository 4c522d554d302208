"""Choosing exit thresholds on held-out data, writing them into the model config, and reporting what they give.

Two targets, each over one criterion's sweep (`utils.analysis.sweep.sweep_criterion`) on cached logits of a
held-out part of the training data:
- a compute budget, `target_speedup`: the most accurate setting whose FLOPs (or layer) speed-up >= the target;
- an accuracy budget, `max_accuracy_drop` (percentage points): the fastest setting whose accuracy >= the final
  classifier's accuracy on the same samples minus the drop.
By default one threshold is shared by every exit and chosen from a grid at quantiles of the scores (101 values);
pass `thresholds` to search other candidates, including per-exit lists. Criteria that count exits (`patience`,
`patient_and_confident`) also search the patience count 1..E.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PretrainedConfig

from models.criteria import get_criterion
from models.exit_settings import ExitSettings
from utils.analysis.flops import FlopsProfile
from utils.analysis.risk_control import lower_confidence_bound, within_budget
from utils.analysis.sweep import CachedLogits, SweepPoint, evaluate_settings, exit_decisions, sweep_criterion
from utils.arguments.analysis import RISK_NAMES

logger = logging.getLogger(__name__)

# Accuracies are fractions; this absorbs float rounding when comparing them with a target.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Calibration:
    """The chosen setting and what it gives on the calibration samples.

    Attributes:
        point: the chosen setting's accuracy and speed-ups on the calibration samples.
        final_accuracy: the final classifier's accuracy on the same samples.
        target: what was asked, e.g. "flops speed-up >= 2.0" or "accuracy drop <= 1.0 points".
        met: whether some setting met the target (if not, `point` is the closest one: the fastest setting for a
            speed-up target, the most accurate one for an accuracy target).
        max_accuracy_drop: the accuracy budget in points, for an accuracy target.
        details: more about how the setting was chosen, for the report (a certificate,
            `utils.analysis.certification`; exit temperatures, `utils.analysis.temperature`).
        others: the other budgets certified together with this one on the same images, sharing its risk level
            (`utils.analysis.certification.certify_budgets`); reported beside it, not applied.
    """

    point: SweepPoint
    final_accuracy: float
    target: str
    met: bool
    max_accuracy_drop: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    others: tuple[Calibration, ...] = ()

    @property
    def settings(self) -> ExitSettings:
        return self.point.settings()


def calibrate(cache: CachedLogits, profile: FlopsProfile, strategy: str, *, target_speedup: float | None = None,
              max_accuracy_drop: float | None = None, speedup: str = "flops",
              thresholds: Sequence[float | Sequence[float]] | None = None,
              patience_values: Sequence[int] | None = None, num_thresholds: int = 101) -> Calibration:
    """Choose `strategy`'s threshold (and patience) on the cached held-out samples.

    Args:
        cache: logits of held-out training samples (`utils.analysis.sweep.collect_logits`).
        profile: the model's FLOPs (`utils.analysis.flops.profile_flops`).
        strategy: exit criterion.
        target_speedup: compute budget; exactly one of it and `max_accuracy_drop` must be given.
        max_accuracy_drop: accuracy budget in percentage points against the final classifier.
        speedup: `flops` or `layer`, the speed-up `target_speedup` refers to.
        thresholds, patience_values, num_thresholds: the candidates (see `utils.analysis.sweep.sweep_criterion`).
    """
    if (target_speedup is None) == (max_accuracy_drop is None):
        raise ValueError("Give exactly one of `target_speedup` and `max_accuracy_drop`.")
    if speedup not in ("flops", "layer"):
        raise ValueError(f"`speedup`={speedup!r} must be 'flops' or 'layer'.")
    points = sweep_criterion(cache, profile, strategy, thresholds, patience_values, num_thresholds)
    final_accuracy = cache.final_accuracy()

    def faster(p: SweepPoint) -> tuple[float, float]:
        return p.speedup(speedup), p.accuracy

    def more_accurate(p: SweepPoint) -> tuple[float, float]:
        return p.accuracy, p.speedup(speedup)

    if target_speedup is not None:
        target = f"{speedup} speed-up >= {target_speedup}"
        meeting = [p for p in points if p.speedup(speedup) >= target_speedup - _TOLERANCE]
        best = max(meeting, key=more_accurate) if meeting else max(points, key=faster)
    else:
        target = f"accuracy drop <= {max_accuracy_drop} points"
        floor = final_accuracy - max_accuracy_drop / 100.0
        meeting = [p for p in points if p.accuracy >= floor - _TOLERANCE]
        best = max(meeting, key=faster) if meeting else max(points, key=more_accurate)
    calibration = Calibration(point=best, final_accuracy=final_accuracy, target=target, met=bool(meeting),
                              max_accuracy_drop=max_accuracy_drop)
    log = logger.info if calibration.met else logger.warning
    log("Calibrated %s on %d samples for %s%s: thresholds %s, patience %d -> accuracy %.4f (final %.4f), "
        "FLOPs speed-up %.3f, layer speed-up %.3f.", strategy, len(cache), target,
        "" if calibration.met else " (not reachable; closest setting)", compact_thresholds(best.thresholds),
        best.patience, best.accuracy, final_accuracy, best.flops_speedup, best.layer_speedup)
    return calibration


def compact_thresholds(thresholds: Sequence[float]) -> float | list[float]:
    """One float when every exit shares the threshold, else the list."""
    return thresholds[0] if len(set(thresholds)) == 1 else list(thresholds)


def write_exit_settings(config: PretrainedConfig, settings: ExitSettings) -> None:
    """Store an exit setting in a model config (`exit_strategy`, `threshold`, `patience`), so that the next
    forward call uses it and `save_pretrained` keeps it.

    `threshold` becomes one float when every exit shares it; `threshold` and `patience` are written for the criteria
    that read them and left alone otherwise. The config checks the result; a setting it
    refuses raises ValueError and leaves the config unchanged.
    """
    previous = (config.exit_strategy, config.threshold, config.patience)
    config.exit_strategy = settings.strategy
    criterion = get_criterion(settings.strategy)
    if criterion.uses_threshold:
        config.threshold = compact_thresholds(settings.thresholds)
    if criterion.uses_patience:
        config.patience = settings.patience
    try:
        config.exit_settings()
    except ValueError:
        config.exit_strategy, config.threshold, config.patience = previous  # leave the config as it was
        raise


def evaluation_report(cache: CachedLogits, profile: FlopsProfile, settings: ExitSettings,
                      calibration: Calibration | None = None) -> dict[str, Any]:
    """What `settings` achieve on evaluation samples, next to the calibration samples' values when given.

    Accuracies are fractions and `accuracy_drop` is in percentage points (final - early exit). The budgets certified
    beside the calibration's own are reported the same way, each with its own setting, in `other_budgets`.
    """
    point = evaluate_settings(cache, settings, profile)
    final_accuracy = cache.final_accuracy()
    report: dict[str, Any] = {
        "strategy": settings.strategy,
        "threshold": compact_thresholds(point.thresholds),
        "patience": settings.patience,
        "samples": len(cache),
        "accuracy": point.accuracy,
        "final_accuracy": final_accuracy,
        "accuracy_drop": 100.0 * (final_accuracy - point.accuracy),
        "average_exit_layer": point.average_exit_layer,
        "layer_speedup": point.layer_speedup,
        "flops_speedup": point.flops_speedup,
        "average_flops": point.average_flops,
        "full_model_flops": profile.full_model,
    }
    if calibration is not None:
        report.update({
            "target": calibration.target,
            "target_met_on_calibration": calibration.met,
            "calibration_accuracy": calibration.point.accuracy,
            "calibration_final_accuracy": calibration.final_accuracy,
            "calibration_layer_speedup": calibration.point.layer_speedup,
            "calibration_flops_speedup": calibration.point.flops_speedup,
            **calibration.details,
        })
        if calibration.max_accuracy_drop is not None:
            report.update(budget_on_evaluation(cache, settings, calibration.max_accuracy_drop,
                                               calibration.details.get("risk", "accuracy")))
        if calibration.others:
            report["other_budgets"] = [evaluation_report(cache, profile, other.settings, other)
                                       for other in calibration.others]
    return report


def budget_on_evaluation(cache: CachedLogits, settings: ExitSettings, max_accuracy_drop: float,
                         risk: str = "accuracy") -> dict[str, Any]:
    """Whether `settings` kept the accuracy budget on these (evaluation) images, from integer counts: the net drop
    (final classifier right minus early exit right) and the certified `risk` (`RISK_NAMES`, named in
    `evaluation_risk_name`), both against the budget in points.

    A finite evaluation split measures the risk with noise, so the report adds the risk's one-sided 95% lower
    confidence bound: only when that bound is above the budget do the images show the promise broken beyond chance.
    """
    logits, _ = exit_decisions(cache, settings)
    early, final = logits.argmax(dim=-1), cache.final_logits.argmax(dim=-1)
    early_correct, final_correct = early == cache.labels, final == cache.labels
    drop = int(final_correct.sum()) - int(early_correct.sum())
    losses = early != final if risk == "consistency" else ~early_correct & final_correct
    errors = int(losses.sum())
    return {
        "max_accuracy_drop": max_accuracy_drop,
        "accuracy_drop_within_budget": within_budget(drop, len(cache), max_accuracy_drop),
        "evaluation_risk_name": RISK_NAMES[risk],
        "evaluation_risk": 100.0 * errors / len(cache),
        "evaluation_risk_within_budget": within_budget(errors, len(cache), max_accuracy_drop),
        "evaluation_risk_lower_bound": 100.0 * lower_confidence_bound(errors, len(cache), 0.05),
    }

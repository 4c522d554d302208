"""The accuracy-speed analysis around an evaluation: calibration before it, sweep, timing and figures after it."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.criteria import get_criterion


@dataclass
class AnalysisArguments:
    """The accuracy-speed analysis of an evaluation (`utils.analysis`): threshold calibration before it, and a
    one-pass sweep of every exit criterion, the measured speed-up and the figures after it; and whether every
    evaluation also reports each exit's own accuracy."""

    target_speedup: float | None = field(
        default=None,
        metadata={"help": "Calibrate thresholds to the most accurate setting with at least this speed-up "
                          "(see --calibration_speedup) on the --calibration_split samples; saved in the config."},
    )
    max_accuracy_drop: float | None = field(
        default=None,
        metadata={"help": "Calibrate thresholds to the fastest setting losing at most this many accuracy points "
                          "against the final classifier on the --calibration_split samples; saved in the config."},
    )
    calibration_strategy: str | None = field(
        default=None, metadata={"help": "Exit criterion to calibrate (default: the model's exit_strategy)."}
    )
    calibration_speedup: str = field(
        default="flops", metadata={"help": "Speed-up --target_speedup refers to: flops (exit heads counted) or layer."}
    )
    every_exit_accuracy: bool = field(
        default=True,
        metadata={"help": "Every evaluation also runs every exit on every image (one more pass without early exit) "
                          "and reports each exit's own accuracy (eval_accuracy_exit_<layer>)."},
    )
    sweep: bool = field(
        default=False,
        metadata={"help": "After evaluating, run the eval set once with every exit and write every criterion's "
                          "accuracy/speed-up curve (sweep.json, analysis_results.json) and the figures."},
    )
    measure_speedup: bool = field(
        default=False,
        metadata={"help": "Also time early exit against the full model on eval images (wall-clock speed-up)."},
    )
    speed_samples: int = field(default=1024, metadata={"help": "Eval images timed by --measure_speedup (at most)."})
    speed_repeats: int = field(
        default=11, metadata={"help": "Timing rounds of --measure_speedup; the report gives their median and range."}
    )

    def __post_init__(self) -> None:
        if self.target_speedup is not None and self.max_accuracy_drop is not None:
            raise ValueError("Give one of --target_speedup and --max_accuracy_drop, not both.")
        if self.target_speedup is not None and self.target_speedup < 1.0:
            raise ValueError(f"--target_speedup={self.target_speedup} must be >= 1 (1 = the full model's cost).")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0.0:
            raise ValueError(f"--max_accuracy_drop={self.max_accuracy_drop} must be >= 0 (accuracy points).")
        if self.calibration_strategy is not None:
            get_criterion(self.calibration_strategy, field="calibration_strategy")
        if self.calibration_speedup not in ("flops", "layer"):
            raise ValueError(f"--calibration_speedup={self.calibration_speedup!r} must be flops or layer.")
        if self.speed_samples < 1 or self.speed_repeats < 1:
            raise ValueError("--speed_samples and --speed_repeats must be >= 1.")

    @property
    def calibrates(self) -> bool:
        return self.target_speedup is not None or self.max_accuracy_drop is not None

    @property
    def analyses(self) -> bool:
        """Whether the evaluation is followed by the analysis pass (sweep, report, figures)."""
        return self.sweep or self.measure_speedup or self.calibrates

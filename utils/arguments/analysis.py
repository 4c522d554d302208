"""The accuracy-speed analysis around an evaluation: calibration before it, sweep, timing and figures after it."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.criteria import get_criterion

# How `--risk_level` certifies (utils.analysis.certification, utils.analysis.risk_control).
RISKS = ("accuracy", "consistency")
# What each risk counts per image, as reports name it.
RISK_NAMES = {"accuracy": "accuracy risk (early answer wrong where the final classifier is right)",
              "consistency": "consistency risk (early answer differs from the final classifier's)"}
RISK_BOUNDS = ("binomial", "hoeffding_bentkus")
THRESHOLD_PATHS = ("shared", "depth")


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
    risk_level: float | None = field(
        default=None,
        metadata={"help": "Certify --max_accuracy_drop: with probability >= 1 - risk_level over the calibration draw, "
                          "new images from the same distribution lose at most that many points (e.g. 0.1)."},
    )
    extra_budgets: list[float] | None = field(
        default=None,
        metadata={"help": "More accuracy budgets (points) certified beside --max_accuracy_drop on the same calibration "
                          "split: the 1 + k budgets share --risk_level (each certified at risk_level / (1 + k), "
                          "Bonferroni), so all hold together and any may be kept; every one is reported "
                          "(other_budgets), the model keeps --max_accuracy_drop's setting."},
    )
    risk: str = field(
        default="accuracy",
        metadata={"help": "What --risk_level certifies per image: accuracy (early answer wrong where the final "
                          "classifier is right) or consistency (early answer differs from the final one; no labels)."},
    )
    risk_bound: str = field(
        default="binomial",
        metadata={"help": "Bound --risk_level tests with: binomial (exact, Clopper-Pearson) or hoeffding_bentkus."},
    )
    threshold_path: str = field(
        default="shared",
        metadata={"help": "Certified candidates: shared (one threshold for every exit) or depth (per-exit thresholds "
                          "along a fixed path, shallower exits stricter)."},
    )
    certified_patience: list[int] | None = field(
        default=None,
        metadata={"help": "Patience counts certified for patient_and_confident (default: the model's own); several "
                          "split --risk_level evenly (Bonferroni), so each needs more calibration images."},
    )
    temperature_split: float = field(
        default=0.0,
        metadata={"help": "Fit one temperature per exit on this fraction of the calibration split (folded into the "
                          "exit heads) and choose thresholds on the rest; 0 = no temperature scaling."},
    )
    calibration_strategy: str | None = field(
        default=None, metadata={"help": "Exit criterion to calibrate (default: the model's exit_strategy)."}
    )
    calibration_speedup: str = field(
        default="flops", metadata={"help": "Speed-up --target_speedup refers to: flops (exit heads counted) or layer."}
    )
    every_exit_accuracy: bool = field(
        default=True,
        metadata={"help": "Every evaluation computes every exit on every image (the early exit is decided from those "
                          "logits, in the same one pass) and reports each exit's own accuracy "
                          "(eval_accuracy_exit_<layer>); False runs the cheaper per-sample early exit alone."},
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
    speed_samples: int = field(
        default=1024, metadata={"help": "Eval images timed by --measure_speedup (at most), drawn at random across the "
                                        "split with --seed."}
    )
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
        self.check_certification()
        if self.calibration_strategy is not None:
            get_criterion(self.calibration_strategy, field="calibration_strategy")
        if self.calibration_speedup not in ("flops", "layer"):
            raise ValueError(f"--calibration_speedup={self.calibration_speedup!r} must be flops or layer.")
        if self.speed_samples < 1 or self.speed_repeats < 1:
            raise ValueError("--speed_samples and --speed_repeats must be >= 1.")

    def check_certification(self) -> None:
        """Refuse certification options that are out of range or that nothing would read."""
        if self.risk_level is not None:
            if self.max_accuracy_drop is None or self.max_accuracy_drop <= 0.0:
                raise ValueError("--risk_level certifies an accuracy budget: give --max_accuracy_drop > 0 too.")
            if not 0.0 < self.risk_level < 1.0:
                raise ValueError(f"--risk_level={self.risk_level} must lie strictly between 0 and 1, e.g. 0.1.")
        elif (self.risk, self.risk_bound, self.threshold_path, self.certified_patience, self.extra_budgets) != (
                "accuracy", "binomial", "shared", None, None):
            raise ValueError("--risk, --risk_bound, --threshold_path, --certified_patience and --extra_budgets choose "
                             "how --risk_level certifies: give --risk_level (e.g. 0.1) too.")
        for name, value, allowed in (("risk", self.risk, RISKS), ("risk_bound", self.risk_bound, RISK_BOUNDS),
                                     ("threshold_path", self.threshold_path, THRESHOLD_PATHS)):
            if value not in allowed:
                raise ValueError(f"--{name}={value!r} must be one of {', '.join(allowed)}.")
        if self.certified_patience is not None and (not self.certified_patience
                                                    or min(self.certified_patience) < 1):
            raise ValueError(f"--certified_patience={self.certified_patience} must list whole numbers >= 1.")
        if self.extra_budgets is not None:
            self.check_extra_budgets()
        if not 0.0 <= self.temperature_split < 1.0:
            raise ValueError(f"--temperature_split={self.temperature_split} must be in [0, 1), e.g. 0.3.")
        if self.temperature_split > 0.0 and not self.calibrates:
            raise ValueError("--temperature_split scales the exits before calibrating thresholds: give "
                             "--max_accuracy_drop or --target_speedup too.")

    def check_extra_budgets(self) -> None:
        """Refuse extra budgets that are missing, not positive, or repeated (a repeat would only lower the level)."""
        budgets = self.certified_budgets
        if not self.extra_budgets or min(budgets) <= 0.0 or len(set(budgets)) < len(budgets):
            raise ValueError(f"--extra_budgets={self.extra_budgets} must list accuracy budgets > 0 (points), each "
                             f"different from the others and from --max_accuracy_drop={self.max_accuracy_drop:g}, "
                             "e.g. --max_accuracy_drop 1 --extra_budgets 0.5 2.")

    @property
    def certified_budgets(self) -> list[float]:
        """The budgets --risk_level certifies: --max_accuracy_drop's (the one the model keeps) first."""
        return [self.max_accuracy_drop, *(self.extra_budgets or [])]

    @property
    def certifies(self) -> bool:
        return self.risk_level is not None

    @property
    def calibrates(self) -> bool:
        return self.target_speedup is not None or self.max_accuracy_drop is not None

    @property
    def analyses(self) -> bool:
        """Whether the evaluation is followed by the analysis pass (sweep, report, figures)."""
        return self.sweep or self.measure_speedup or self.calibrates

"""Does a threshold rule keep its accuracy promise on new images? A check by simulation.

A population of images with every exit's logits is known in full (cached logits of a real run, or a synthetic
multi-exit model). Each draw takes a calibration set of n images from it (independently, with replacement), lets a
rule choose an exit setting on them, and measures the chosen setting on the whole population, where its risk and
accuracy drop are known exactly. A rule keeps its promise when the share of draws whose choice breaks the budget
(population value > epsilon) is at most delta.

Rules: `certified` (`utils.analysis.certification`) and `empirical` (the fastest candidate whose accuracy drop on
the calibration images is within the budget: `utils.analysis.calibration.calibrate`'s rule on the same
candidates). With `temperature_samples`, each draw first fits exit temperatures on images of its own, then
certifies on the scaled logits (`utils.analysis.temperature`).

Usage (from the repository root):
    python -m utils.analysis.risk_simulation --logits tests/fixtures/certification/digits_sdn_logits.pt \
        --flops tests/fixtures/certification/digits_sdn_flops.json --strategy confidence --calibration_samples 306
    python -m utils.analysis.risk_simulation --synthetic 5000 --strategy confidence --calibration_samples 300
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from utils.analysis.certification import (
    GRID_SIZE,
    CandidateTable,
    candidate_sequences,
    candidate_table,
    certified_indices,
    fastest,
)
from utils.analysis.flops import FlopsProfile
from utils.analysis.risk_control import budget_count
from utils.analysis.sweep import CachedLogits
from utils.analysis.temperature import fit_exit_temperatures
from utils.arguments.analysis import RISK_BOUNDS, RISKS, THRESHOLD_PATHS

logger = logging.getLogger(__name__)

RULES = ("certified", "empirical")


@dataclass(frozen=True)
class RuleOutcome:
    """How one rule fared over the draws.

    Attributes:
        rule: `certified` or `empirical`.
        draws: calibration sets drawn.
        risk_failures: draws whose choice has a population risk above the budget.
        drop_failures: draws whose choice has a population accuracy drop above the budget.
        mean_risk, mean_drop: the choices' population risk and accuracy drop, in points, averaged over the draws.
        mean_flops_speedup: the choices' population FLOPs speed-up, averaged over the draws.
        flops_speedup_range: its 5th and 95th percentiles over the draws: how far the calibration draw alone moves
            the speed-up of one model.
    """

    rule: str
    draws: int
    risk_failures: int
    drop_failures: int
    mean_risk: float
    mean_drop: float
    mean_flops_speedup: float
    flops_speedup_range: tuple[float, float]

    def failure_interval(self, failures: int, confidence: float = 0.99) -> tuple[float, float]:
        """Two-sided exact (Clopper-Pearson) confidence interval of the probability behind `failures` / draws."""
        interval = binomtest(failures, self.draws).proportion_ci(confidence_level=confidence, method="exact")
        return float(interval.low), float(interval.high)

    def as_dict(self) -> dict[str, object]:
        values = asdict(self)
        for name in ("risk", "drop"):
            failures = getattr(self, f"{name}_failures")
            values[f"{name}_failure_share"] = failures / self.draws
            values[f"{name}_failure_interval_99"] = self.failure_interval(failures)
        return values


@dataclass(frozen=True)
class Population:
    """Every candidate's exact population values: integer risk and drop counts, and the FLOPs speed-up."""

    risk_counts: list[int]
    drop_counts: list[int]
    flops_speedups: list[float]
    size: int


def population_values(table: CandidateTable, profile: FlopsProfile, risk: str) -> Population:
    """Every candidate's values on the whole population (`table` holds the population's images)."""
    drops = int(table.final_correct.sum()) - table.early_correct.sum(dim=1)
    return Population(table.losses(risk).sum(dim=1).tolist(), drops.tolist(),
                      (profile.full_model / table.flops.mean(dim=1)).tolist(), len(table.final_correct))


def empirical_choice(table: CandidateTable, max_accuracy_drop: float) -> int:
    """The fastest candidate whose accuracy drop on the table's images is within the budget (the "never exits
    early" candidate always is)."""
    samples = len(table.final_correct)
    drops = (int(table.final_correct.sum()) - table.early_correct.sum(dim=1)).tolist()
    allowed = budget_count(samples, max_accuracy_drop)
    return fastest(table, [index for index, drop in enumerate(drops) if drop <= allowed])


def scaled(cache: CachedLogits, temperatures: Sequence[float]) -> CachedLogits:
    """The cache with each exit's logits divided by its temperature."""
    divisor = torch.tensor(temperatures, dtype=cache.exit_logits.dtype).reshape(-1, 1, 1)
    return replace(cache, exit_logits=cache.exit_logits / divisor)


def outcome(rule: str, chosen: Sequence[int], population: Population, max_accuracy_drop: float) -> RuleOutcome:
    """Summarise one rule's choices (indices into `population`, one per draw) on the population."""
    size, draws, allowed = population.size, len(chosen), budget_count(population.size, max_accuracy_drop)
    risks = [population.risk_counts[index] for index in chosen]
    drops = [population.drop_counts[index] for index in chosen]
    speedups = [population.flops_speedups[index] for index in chosen]
    return RuleOutcome(
        rule=rule, draws=draws, risk_failures=sum(count > allowed for count in risks),
        drop_failures=sum(count > allowed for count in drops),
        mean_risk=100.0 * sum(risks) / size / draws, mean_drop=100.0 * sum(drops) / size / draws,
        mean_flops_speedup=sum(speedups) / draws,
        flops_speedup_range=(float(np.percentile(speedups, 5)), float(np.percentile(speedups, 95))))


def simulate(cache: CachedLogits, profile: FlopsProfile, strategy: str, calibration_samples: int,
             max_accuracy_drop: float, risk_level: float, draws: int, *, risk: str = "accuracy",
             bound: str = "binomial", path: str = "shared", patience_values: Sequence[int] | None = None,
             num: int = GRID_SIZE, seed: int = 0) -> dict[str, RuleOutcome]:
    """Draw `draws` calibration sets of `calibration_samples` images from the population `cache`, let each rule
    choose on every one, and summarise the choices on the population ({rule: outcome})."""
    sequences = candidate_sequences(strategy, cache.final_logits.shape[-1], cache.exit_layers, cache.num_blocks,
                                    path, patience_values, num)
    table = candidate_table(cache, profile, sequences)
    population = population_values(table, profile, risk)
    generator = torch.Generator().manual_seed(seed)
    chosen: dict[str, list[int]] = {rule: [] for rule in RULES}
    for _ in range(draws):
        draw = table.select(torch.randint(len(cache), (calibration_samples,), generator=generator))
        chosen["certified"].append(fastest(draw, certified_indices(draw, max_accuracy_drop / 100.0, risk_level,
                                                                   risk, bound)))
        chosen["empirical"].append(empirical_choice(draw, max_accuracy_drop))
    if None in chosen["certified"]:
        raise ValueError(f"{calibration_samples} calibration images are too few to certify the budget.")
    return {rule: outcome(rule, indices, population, max_accuracy_drop) for rule, indices in chosen.items()}


def simulate_with_temperatures(cache: CachedLogits, profile: FlopsProfile, strategy: str, calibration_samples: int,
                               temperature_samples: int, max_accuracy_drop: float, risk_level: float, draws: int, *,
                               risk: str = "accuracy", bound: str = "binomial", num: int = GRID_SIZE,
                               seed: int = 0) -> RuleOutcome:
    """The certified rule with exit temperatures fitted on `temperature_samples` further images of each draw: the
    candidates are rebuilt on the scaled logits every draw, so this is slower than `simulate`."""
    sequences = candidate_sequences(strategy, cache.final_logits.shape[-1], cache.exit_layers, cache.num_blocks,
                                    num=num)
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(draws):
        fit_part = cache.select(torch.randint(len(cache), (temperature_samples,), generator=generator))
        population = scaled(cache, fit_exit_temperatures(fit_part))
        calibration = population.select(torch.randint(len(cache), (calibration_samples,), generator=generator))
        draw = candidate_table(calibration, profile, sequences)
        index = fastest(draw, certified_indices(draw, max_accuracy_drop / 100.0, risk_level, risk, bound))
        values.append(population_values(candidate_table(population, profile, [[draw.settings[index]]]), profile,
                                        risk))
    chosen = Population([v.risk_counts[0] for v in values], [v.drop_counts[0] for v in values],
                        [v.flops_speedups[0] for v in values], len(cache))
    return outcome("certified (temperature scaled)", range(draws), chosen, max_accuracy_drop)


def synthetic_logits(num_samples: int, num_exits: int, num_classes: int, seed: int,
                     strengths: tuple[float, float]) -> CachedLogits:
    """Cached logits of a synthetic multi-exit model: each classifier's logits are the label's one-hot vector times
    a strength growing linearly with depth from `strengths[0]` (first exit) to `strengths[1]` (final classifier),
    plus Gaussian noise, so later exits are more accurate and more confident. Exits on layers 1..E of E + 1."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    one_hot = torch.nn.functional.one_hot(labels, num_classes).float()
    logits = torch.stack([strength * one_hot + torch.randn(num_samples, num_classes, generator=generator)
                          for strength in torch.linspace(*strengths, num_exits + 1)])
    return CachedLogits(logits[:-1], logits[-1], labels, tuple(range(1, num_exits + 1)), num_exits + 1)


def synthetic_population(num_samples: int, num_exits: int = 11, num_classes: int = 10,
                         seed: int = 0) -> tuple[CachedLogits, FlopsProfile]:
    """A synthetic multi-exit model on `num_samples` images (`synthetic_logits`, strengths 0.8 to 4.0) with blocks
    of 100 FLOPs and exit heads of 5."""
    profile = FlopsProfile(embedding=20, blocks=(100,) * (num_exits + 1), exits=(5,) * num_exits, final_head=5,
                           exit_layers=tuple(range(1, num_exits + 1)), exit_parameters=(0,) * num_exits)
    return synthetic_logits(num_samples, num_exits, num_classes, seed, strengths=(0.8, 4.0)), profile


def read_population(path: str | Path) -> CachedLogits:
    """Cached logits (`CachedLogits.save`), in float32 and int64 whatever precision they were stored in."""
    cache = CachedLogits.load(path)
    return replace(cache, exit_logits=cache.exit_logits.float(), final_logits=cache.final_logits.float(),
                   labels=cache.labels.long())


def read_profile(path: str | Path) -> FlopsProfile:
    """A FlopsProfile from the JSON of `FlopsProfile.to_dict` (e.g. the `flops` entry of analysis_results.json)."""
    values = json.loads(Path(path).read_text())
    return FlopsProfile(**{name: tuple(values[name]) if isinstance(values[name], list) else values[name]
                           for name in FlopsProfile.__dataclass_fields__})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.analysis.risk_simulation",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--logits", help="cached logits of a real run (CachedLogits.save), the population")
    source.add_argument("--synthetic", type=int, help="the population: this many images of a synthetic model")
    parser.add_argument("--flops", help="FlopsProfile JSON of the --logits model (default: one FLOP per block)")
    parser.add_argument("--strategy", default="confidence", help="exit criterion")
    parser.add_argument("--calibration_samples", type=int, required=True, help="images per calibration draw (n)")
    parser.add_argument("--max_accuracy_drop", type=float, default=1.0, help="epsilon, accuracy points")
    parser.add_argument("--risk_level", type=float, default=0.1, help="delta")
    parser.add_argument("--draws", type=int, default=2000, help="calibration sets drawn")
    parser.add_argument("--risk", choices=RISKS, default="accuracy")
    parser.add_argument("--risk_bound", choices=RISK_BOUNDS, default="binomial")
    parser.add_argument("--threshold_path", choices=THRESHOLD_PATHS, default="shared")
    parser.add_argument("--certified_patience", type=int, nargs="+",
                        help="patience counts of patient_and_confident, one sequence each (Bonferroni)")
    parser.add_argument("--grid", type=int, default=GRID_SIZE, help="thresholds per candidate sequence")
    parser.add_argument("--temperature_samples", type=int, default=0,
                        help="also run the certified rule with exit temperatures fitted on this many more images")
    parser.add_argument("--temperature_draws", type=int, default=200, help="draws of the temperature-scaled run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the outcomes to this JSON file")
    return parser


def unit_profile(cache: CachedLogits) -> FlopsProfile:
    """One FLOP per block and free heads: FLOPs speed-ups become layer speed-ups."""
    return FlopsProfile(embedding=0, blocks=(1,) * cache.num_blocks, exits=(0,) * cache.num_exits, final_head=0,
                        exit_layers=cache.exit_layers, exit_parameters=(0,) * cache.num_exits)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, object]]:
    args = build_parser().parse_args(argv)
    if args.synthetic:
        cache, profile = synthetic_population(args.synthetic, seed=args.seed)
    else:
        cache = read_population(args.logits)
        profile = read_profile(args.flops) if args.flops else unit_profile(cache)
    results = simulate(cache, profile, args.strategy, args.calibration_samples, args.max_accuracy_drop,
                       args.risk_level, args.draws, risk=args.risk, bound=args.risk_bound, path=args.threshold_path,
                       patience_values=args.certified_patience, num=args.grid, seed=args.seed)
    if args.temperature_samples:
        results["temperature"] = simulate_with_temperatures(
            cache, profile, args.strategy, args.calibration_samples, args.temperature_samples, args.max_accuracy_drop,
            args.risk_level, args.temperature_draws, risk=args.risk, bound=args.risk_bound, num=args.grid,
            seed=args.seed)
    summary = {name: result.as_dict() for name, result in results.items()}
    for result in results.values():
        low, high = result.failure_interval(result.risk_failures)
        logger.info("%s: %d/%d draws broke the risk budget (99%% interval %.3f-%.3f), %d the accuracy-drop budget; "
                    "mean population risk %.2f points, drop %.2f points, FLOPs speed-up %.3f (5-95%% of draws "
                    "%.3f-%.3f).", result.rule, result.risk_failures, result.draws, low, high, result.drop_failures,
                    result.mean_risk, result.mean_drop, result.mean_flops_speedup, *result.flops_speedup_range)
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()

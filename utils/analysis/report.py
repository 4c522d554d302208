"""The accuracy-speed analysis of an evaluation run (the `AnalysisArguments` of `run_classification.py`).

Before evaluation, `calibrate_to_budget` chooses the exit thresholds on the held-out calibration split
(`--calibration_split`) for a compute or accuracy budget (certified with `--risk_level`,
`utils.analysis.certification`; after optional temperature scaling per exit, `utils.analysis.temperature`) and
writes them into the model config, so the evaluation uses them and `save_pretrained` keeps them; `apply_calibration`
gives another copy of the model the same result (the processes that did not calibrate). After evaluation,
`analyse_evaluation` runs the eval set once with every exit computed and writes, next to `eval_results.json`:
- `sweep.json`: every criterion's curve (accuracy, average exit layer, layer and FLOPs speed-ups per setting);
- `analysis_results.json`: what the model's own exit setting gives (the online evaluation's numbers, plus the FLOPs
  speed-up), each exit's accuracy, the FLOPs per part and the heads' parameters, the calibration target, and with
  `--measure_speedup` the wall-clock speed-up against the full model on a seeded random sample of the split, beside
  that sample's own layer and FLOPs speed-ups;
- `tradeoff.png`, `tradeoff_layers.png`, `exit_accuracy.png`, `exit_histogram.png`, also logged to wandb, where
  every criterion's curve also goes as a table with a line plot (`utils.analysis.wandb_tables`).
Every model run here reads its images as `ModelRuns` says: the evaluation's batch size and precision (its autocast,
so thresholds are fitted on logits of the precision they are applied to) with the training loaders' workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from models.criteria import get_criterion
from utils.analysis.calibration import Calibration, calibrate, evaluation_report, write_exit_settings
from utils.analysis.certification import certify_budgets, check_sample_count, sequence_count
from utils.analysis.flops import FlopsProfile
from utils.analysis.plots import log_figures_to_wandb, plot_exit_accuracy, plot_exit_histogram, plot_tradeoff
from utils.analysis.sweep import (
    CachedLogits,
    collect_logits,
    evaluate_settings,
    exit_decisions,
    exit_layers_of,
    save_sweep,
    sweep,
)
from utils.analysis.temperature import fold_temperatures, scale_exits, temperature_samples
from utils.analysis.timing import measure_speedup, timing_sample
from utils.analysis.wandb_tables import log_tradeoff_curves
from utils.arguments import AnalysisArguments
from utils.data.image_dataset import ImageDataset, collate_fn

logger = logging.getLogger(__name__)


def check_analysis_request(args: AnalysisArguments, num_exits: int, calibration_split: float,
                           calibration_samples: int | None = None, strategy: str | None = None) -> None:
    """Refuse, before any training, an analysis the run cannot do (with `calibration_samples`, the size of the
    calibration split, also a certification it is too small for; `strategy` is the model's exit criterion)."""
    if args.analyses and num_exits == 0:
        raise ValueError("Calibration, --sweep and --measure_speedup need a model with exits; this one has none "
                         "(set --num_early_exits and --highway_type, or drop those flags).")
    if args.calibrates and calibration_split <= 0.0:
        raise ValueError("Threshold calibration needs held-out training data: pass --calibration_split (e.g. 0.1), "
                         "the same value every training stage used, so the calibration samples were never trained on.")
    criterion = args.calibration_strategy or strategy
    if args.certified_patience and criterion and get_criterion(criterion).rule != "streak":
        raise ValueError(f"--certified_patience lists patience counts of patient_and_confident; {criterion} "
                         "certifies no such count (drop the flag, or set --calibration_strategy).")
    if args.certifies and calibration_samples is not None:
        samples = calibration_samples - temperature_samples(calibration_samples, args.temperature_split)
        sequences = sequence_count(criterion, args.certified_patience) if criterion else 1
        check_sample_count(samples, args.certified_budgets, args.risk_level, sequences)


@dataclass(frozen=True)
class ModelRuns:
    """How the analysis runs the model over a split.

    Attributes:
        batch_size: images per model call (the evaluation's).
        num_workers, pin_memory: the loaders' worker processes and pinned memory (the training loaders'; memory is
            pinned only for a model on an accelerator).
        precision: a fresh context the model runs in, e.g. the evaluation's autocast (`Accelerator.autocast`).
    """

    batch_size: int
    num_workers: int = 0
    pin_memory: bool = False
    precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @classmethod
    def of_trainer(cls, trainer: Any) -> ModelRuns:
        """As a Trainer evaluates: its eval batch size and autocast, with its loaders' workers and pinning."""
        args = trainer.args
        return cls(args.per_device_eval_batch_size, args.dataloader_num_workers, args.dataloader_pin_memory,
                   trainer.accelerator.autocast)

    def batches(self, model: nn.Module, dataset: ImageDataset,
                indices: Sequence[int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """`dataset` (or its rows `indices`) in batches, the images on the model's device and normalised there."""
        device = next(model.parameters()).device
        pin = self.pin_memory and device.type != "cpu"
        rows = dataset if indices is None else Subset(dataset, list(indices))
        loader = DataLoader(rows, batch_size=self.batch_size, collate_fn=collate_fn, num_workers=self.num_workers,
                            pin_memory=pin)
        for batch in loader:
            pixels = batch["pixel_values"].to(device, non_blocking=pin)
            yield {"pixel_values": dataset.normalization(pixels), "labels": batch["labels"]}

    def rounding(self, model: nn.Module) -> float:
        """The relative rounding of the logits computed under `precision`: 8 units in the last place of the autocast
        type (float32 without autocast), and at least 1e-4."""
        device_type = next(model.parameters()).device.type
        with self.precision():
            dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
        return max(1e-4, 8 * torch.finfo(dtype).eps)


def measured_speedup_is_valid(report: dict[str, Any]) -> bool:
    """A measured speed-up above the layer speed-up of the images timed (`timed_layer_speedup`) cannot come from
    skipping layers (every layer left out saves at most its own time): such a timing is broken (too few images or
    rounds, or a machine busy with other work)."""
    if report["measured_speedup"] <= report["timed_layer_speedup"]:
        return True
    logger.warning("Measured speed-up %.3f (rounds %.3f-%.3f) exceeds the layer speed-up %.3f of the images timed, "
                   "which skipping layers cannot do: the timing is broken and is not reported. Time more images or "
                   "rounds (--speed_samples, --speed_repeats) on a quiet machine.", report["measured_speedup"],
                   *report["measured_speedup_range"], report["timed_layer_speedup"])
    return False


def cache_logits(model: nn.Module, dataset: ImageDataset, runs: ModelRuns,
                 indices: Sequence[int] | None = None) -> CachedLogits:
    """Every exit's logits on `dataset` (or its rows `indices`), in one pass."""
    with runs.precision():
        return collect_logits(model, runs.batches(model, dataset, indices))


def calibrate_to_budget(model: nn.Module, dataset: ImageDataset, profile: FlopsProfile, args: AnalysisArguments,
                        runs: ModelRuns) -> Calibration:
    """Choose thresholds on `dataset` (the calibration split) and write them into `model.config` (exit temperatures,
    with `--temperature_split`, into its heads)."""
    strategy = args.calibration_strategy or model.config.exit_strategy
    cache = cache_logits(model, dataset, runs)
    fit = None
    if args.temperature_split > 0.0:
        cache, fit = scale_exits(model, cache, args.temperature_split,
                                 lambda indices: cache_logits(model, dataset, runs, indices),
                                 tolerance=runs.rounding(model))
    if args.certifies:
        own = model.config.exit_settings()
        calibration = certify_budgets(cache, profile, strategy, args.certified_budgets, args.risk_level,
                                      risk=args.risk, bound=args.risk_bound, path=args.threshold_path,
                                      patience_values=args.certified_patience or (
                                          [own.patience] if own.strategy == strategy else None))
    else:
        calibration = calibrate(cache, profile, strategy, target_speedup=args.target_speedup,
                                max_accuracy_drop=args.max_accuracy_drop, speedup=args.calibration_speedup)
    if fit is not None:
        calibration = replace(calibration, details={**calibration.details, **fit.as_dict()})
    write_exit_settings(model.config, calibration.settings)
    return calibration


def apply_calibration(model: nn.Module, calibration: Calibration) -> None:
    """Give `model` (another copy of the calibrated one) what `calibrate_to_budget` chose: its exit temperatures, if
    any, and its thresholds."""
    temperatures = calibration.details.get("exit_temperatures")
    if temperatures is not None:
        fold_temperatures(model, temperatures)
    write_exit_settings(model.config, calibration.settings)


def write_figures(cache: CachedLogits, curves: dict, exit_layer: torch.Tensor, output_dir: Path) -> dict[str, Path]:
    """The analysis figures of one model, as PNG files in `output_dir`."""
    final_accuracy = cache.final_accuracy()
    return {
        "tradeoff": plot_tradeoff(curves, output_dir / "tradeoff.png", reference_accuracy=final_accuracy,
                                  title="Accuracy vs FLOPs speed-up, per exit criterion"),
        "tradeoff_layers": plot_tradeoff(curves, output_dir / "tradeoff_layers.png", speedup="layer",
                                         reference_accuracy=final_accuracy,
                                         title="Accuracy vs layer speed-up, per exit criterion"),
        "exit_accuracy": plot_exit_accuracy(cache.exit_accuracies(), cache.exit_layers, final_accuracy,
                                            cache.num_blocks, output_dir / "exit_accuracy.png"),
        "exit_histogram": plot_exit_histogram(exit_layer, cache.num_blocks, output_dir / "exit_histogram.png",
                                              cache.exit_layers),
    }


def timed_speedup(model: nn.Module, dataset: ImageDataset, profile: FlopsProfile, args: AnalysisArguments,
                  runs: ModelRuns, seed: int) -> dict[str, Any]:
    """The wall-clock speed-up of the model's own early exit on `--speed_samples` images drawn at random (`seed`)
    from `dataset`, beside the layer and FLOPs speed-ups of those same images (images that cannot be read are
    left out)."""
    indices = timing_sample(len(dataset), args.speed_samples, seed)
    batches = list(runs.batches(model, dataset, indices))
    with runs.precision():
        timed = evaluate_settings(collect_logits(model, batches), model.config.exit_settings(), profile)
        report = measure_speedup(model, torch.cat([batch["pixel_values"] for batch in batches]), runs.batch_size,
                                 args.speed_repeats)
    report.update(timing_seed=seed, timed_layer_speedup=timed.layer_speedup,
                  timed_flops_speedup=timed.flops_speedup,
                  measured_over_flops_speedup=report["measured_speedup"] / timed.flops_speedup)
    report["measured_speedup_valid"] = measured_speedup_is_valid(report)
    return report


def log_budget(report: dict[str, Any]) -> None:
    """Log how the evaluation split kept an accuracy budget: the risk that was certified (or, empirically, the
    accuracy risk) under its own name, and the accuracy drop beside it."""
    if "evaluation_risk" not in report:
        return
    logger.info("Budget %g points on the evaluation split: %s %.2f points (one-sided 95%% lower bound %.2f), "
                "accuracy drop %.2f points.", report["max_accuracy_drop"], report["evaluation_risk_name"],
                report["evaluation_risk"], report["evaluation_risk_lower_bound"], report["accuracy_drop"])


def analyse_evaluation(model: nn.Module, dataset: ImageDataset, profile: FlopsProfile, args: AnalysisArguments,
                       runs: ModelRuns, output_dir: str | Path, calibration: Calibration | None = None,
                       seed: int = 0) -> dict[str, Any]:
    """Sweep, report, time (on images drawn with `seed`) and plot the model on the eval `dataset`; returns
    `analysis_results.json`'s content."""
    output_dir = Path(output_dir)
    cache = cache_logits(model, dataset, runs)
    settings = model.config.exit_settings()
    report = evaluation_report(cache, profile, settings, calibration)
    report["exit_accuracies"] = {str(layer): value for layer, value in zip(cache.exit_layers, cache.exit_accuracies())}
    report["flops"] = profile.to_dict()
    curves = sweep(cache, profile)
    save_sweep(curves, output_dir / "sweep.json", extra={
        "final_accuracy": cache.final_accuracy(), "exit_layers": list(cache.exit_layers),
        "num_blocks": cache.num_blocks, "samples": len(cache)})
    if args.measure_speedup:
        report.update(timed_speedup(model, dataset, profile, args, runs, seed))
    _, exit_index = exit_decisions(cache, settings)
    figures = write_figures(cache, curves, exit_layers_of(cache, exit_index), output_dir)
    (output_dir / "analysis_results.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("Analysis (%s, threshold %s): accuracy %.4f (final classifier %.4f), layer speed-up %.3f, FLOPs "
                "speed-up %.3f%s; written to %s", report["strategy"], report["threshold"], report["accuracy"],
                report["final_accuracy"], report["layer_speedup"], report["flops_speedup"],
                f", measured speed-up {report['measured_speedup']:.3f}" if args.measure_speedup else "", output_dir)
    log_budget(report)
    log_tradeoff_curves(curves)
    if log_figures_to_wandb(figures):
        import wandb

        wandb.run.summary.update({f"analysis/{name}": value for name, value in report.items()
                                  if isinstance(value, (int, float))})
    return report

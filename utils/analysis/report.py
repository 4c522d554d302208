"""The accuracy-speed analysis of an evaluation run (the `AnalysisArguments` of `run_classification.py`).

Before evaluation, `calibrate_to_budget` chooses the exit thresholds on the held-out calibration split
(`--calibration_split`) for a compute or accuracy budget (certified with `--risk_level`,
`utils.analysis.certification`; after optional temperature scaling per exit, `utils.analysis.temperature`) and
writes them into the model config, so the evaluation uses them and `save_pretrained` keeps them. After evaluation,
`analyse_evaluation` runs the eval set once with every exit computed and writes, next to `eval_results.json`:
- `sweep.json`: every criterion's curve (accuracy, average exit layer, layer and FLOPs speed-ups per setting);
- `analysis_results.json`: what the model's own exit setting gives (the online evaluation's numbers, plus the FLOPs
  speed-up), each exit's accuracy, the FLOPs per part and the heads' parameters, the calibration target, and with
  `--measure_speedup` the wall-clock speed-up against the full model;
- `tradeoff.png`, `tradeoff_layers.png`, `exit_accuracy.png`, `exit_histogram.png`, also logged to wandb, where
  every criterion's curve also goes as a table with a line plot (`utils.analysis.wandb_tables`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from models.criteria import get_criterion
from utils.analysis.calibration import Calibration, calibrate, evaluation_report, write_exit_settings
from utils.analysis.certification import certify, sequence_count, too_small_message
from utils.analysis.flops import FlopsProfile
from utils.analysis.plots import log_figures_to_wandb, plot_exit_accuracy, plot_exit_histogram, plot_tradeoff
from utils.analysis.risk_control import minimum_samples
from utils.analysis.sweep import CachedLogits, collect_logits, exit_decisions, exit_layers_of, save_sweep, sweep
from utils.analysis.temperature import scale_exits, temperature_samples
from utils.analysis.timing import measure_speedup
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
        if samples < minimum_samples(args.max_accuracy_drop / 100.0, args.risk_level, sequences):
            raise ValueError(too_small_message(samples, args.max_accuracy_drop, args.risk_level, sequences))


def measured_speedup_is_valid(report: dict[str, Any]) -> bool:
    """A measured speed-up above the layer speed-up cannot come from skipping layers (every layer left out saves at
    most its own time): such a timing is broken (too few images or rounds, or a machine busy with other work)."""
    if report["measured_speedup"] <= report["layer_speedup"]:
        return True
    logger.warning("Measured speed-up %.3f (rounds %.3f-%.3f) exceeds the layer speed-up %.3f, which skipping layers "
                   "cannot do: the timing is broken and is not reported. Time more images or rounds "
                   "(--speed_samples, --speed_repeats) on a quiet machine.", report["measured_speedup"],
                   *report["measured_speedup_range"], report["layer_speedup"])
    return False


def cache_logits(model: nn.Module, dataset: ImageDataset, batch_size: int,
                 indices: Sequence[int] | None = None) -> CachedLogits:
    """Every exit's logits on `dataset` (or its rows `indices`), in one pass."""
    rows = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=collate_fn)
    return collect_logits(model, ({**batch, "pixel_values": dataset.normalization(batch["pixel_values"])}
                                  for batch in loader))


def calibrate_to_budget(model: nn.Module, dataset: ImageDataset, profile: FlopsProfile, args: AnalysisArguments,
                        batch_size: int) -> Calibration:
    """Choose thresholds on `dataset` (the calibration split) and write them into `model.config`."""
    strategy = args.calibration_strategy or model.config.exit_strategy
    cache = cache_logits(model, dataset, batch_size)
    fit = None
    if args.temperature_split > 0.0:
        cache, fit = scale_exits(model, cache, args.temperature_split,
                                 lambda indices: cache_logits(model, dataset, batch_size, indices))
    if args.certifies:
        own = model.config.exit_settings()
        calibration = certify(cache, profile, strategy, args.max_accuracy_drop, args.risk_level, risk=args.risk,
                              bound=args.risk_bound, path=args.threshold_path,
                              patience_values=args.certified_patience or ([own.patience] if own.strategy == strategy
                                                                          else None))
    else:
        calibration = calibrate(cache, profile, strategy, target_speedup=args.target_speedup,
                                max_accuracy_drop=args.max_accuracy_drop, speedup=args.calibration_speedup)
    if fit is not None:
        calibration = replace(calibration, details={**calibration.details, **fit.as_dict()})
    write_exit_settings(model.config, calibration.settings)
    return calibration


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


def analyse_evaluation(model: nn.Module, dataset: ImageDataset, profile: FlopsProfile, args: AnalysisArguments,
                       batch_size: int, output_dir: str | Path,
                       calibration: Calibration | None = None) -> dict[str, Any]:
    """Sweep, report, time and plot the model on the eval `dataset`; returns `analysis_results.json`'s content."""
    output_dir = Path(output_dir)
    cache = cache_logits(model, dataset, batch_size)
    settings = model.config.exit_settings()
    report = evaluation_report(cache, profile, settings, calibration)
    report["exit_accuracies"] = {str(layer): value for layer, value in zip(cache.exit_layers, cache.exit_accuracies())}
    report["flops"] = profile.to_dict()
    curves = sweep(cache, profile)
    save_sweep(curves, output_dir / "sweep.json", extra={
        "final_accuracy": cache.final_accuracy(), "exit_layers": list(cache.exit_layers),
        "num_blocks": cache.num_blocks, "samples": len(cache)})
    if args.measure_speedup:
        rows = (dataset[i]["pixel_values"] for i in range(min(args.speed_samples, len(dataset))))
        readable = [pixels for pixels in rows if pixels is not None]  # unreadable images are skipped
        images = dataset.normalization(torch.stack(readable))
        report.update(measure_speedup(model, images, batch_size, args.speed_repeats))
        report["measured_over_flops_speedup"] = report["measured_speedup"] / report["flops_speedup"]
        report["measured_speedup_valid"] = measured_speedup_is_valid(report)
    _, exit_index = exit_decisions(cache, settings)
    figures = write_figures(cache, curves, exit_layers_of(cache, exit_index), output_dir)
    (output_dir / "analysis_results.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("Analysis (%s, threshold %s): accuracy %.4f (final classifier %.4f), layer speed-up %.3f, FLOPs "
                "speed-up %.3f%s; written to %s", report["strategy"], report["threshold"], report["accuracy"],
                report["final_accuracy"], report["layer_speedup"], report["flops_speedup"],
                f", measured speed-up {report['measured_speedup']:.3f}" if args.measure_speedup else "", output_dir)
    log_tradeoff_curves(curves)
    if log_figures_to_wandb(figures):
        import wandb

        wandb.run.summary.update({f"analysis/{name}": value for name, value in report.items()
                                  if isinstance(value, (int, float))})
    return report

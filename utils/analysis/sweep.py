"""Accuracy-speed curves of every exit criterion from one evaluation pass.

`collect_logits` runs the model once with every exit computed (`early_exit=False`) and keeps each sample's logits
at every exit, the final logits and the label. Any exit rule is then applied to those cached logits by
`models.exiting.decide_from_logits`, which gives exactly the decisions of the online per-sample early exit, so a
whole threshold grid costs no further model run.

Thresholds in a sweep are one value shared by every exit (the original code's convention); `evaluate_settings`
accepts any per-exit list. Speed-ups: `layer_speedup` = num_blocks / average exit layer (the paper's, heads are
free) and `flops_speedup` = full-model FLOPs / average per-sample FLOPs (`utils.flops`; heads included).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.criteria import EXIT_CRITERIA, get_criterion
from models.exit_settings import ExitSettings
from models.exiting import decide_from_logits
from utils.analysis.flops import FlopsProfile
from utils.analysis.metrics import accuracy

logger = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


@dataclass
class CachedLogits:
    """Every exit's and the final classifier's logits for a set of samples.

    Attributes:
        exit_logits: (E, N, K), exits in position order.
        final_logits: (N, K).
        labels: (N,) class ids.
        exit_layers: 1-based layer of each exit.
        num_blocks: backbone depth in blocks (the exit layer of the final classifier).
    """

    exit_logits: torch.Tensor
    final_logits: torch.Tensor
    labels: torch.Tensor
    exit_layers: tuple[int, ...]
    num_blocks: int

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def num_exits(self) -> int:
        return self.exit_logits.shape[0]

    def select(self, indices: torch.Tensor) -> CachedLogits:
        """The samples at `indices`."""
        return CachedLogits(self.exit_logits[:, indices], self.final_logits[indices], self.labels[indices],
                            self.exit_layers, self.num_blocks)

    def split(self, fraction: float, seed: int = 0) -> tuple[CachedLogits, CachedLogits]:
        """(a random `fraction` of the samples, the rest), e.g. a calibration part and an evaluation part."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        cut = round(fraction * len(self))
        return self.select(order[:cut]), self.select(order[cut:])

    def final_accuracy(self) -> float:
        return accuracy(self.final_logits, self.labels)

    def exit_accuracies(self) -> list[float]:
        """Accuracy of each exit on every sample (as if all samples left there)."""
        return [accuracy(logits, self.labels) for logits in self.exit_logits]

    def save(self, path: str | Path) -> None:
        torch.save({"exit_logits": self.exit_logits, "final_logits": self.final_logits, "labels": self.labels,
                    "exit_layers": list(self.exit_layers), "num_blocks": self.num_blocks}, path)

    @classmethod
    def load(cls, path: str | Path) -> CachedLogits:
        values = torch.load(path, weights_only=True)
        return cls(**{**values, "exit_layers": tuple(values["exit_layers"])})


def _unpack(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["pixel_values"], batch["labels"]
    return batch[0], batch[1]


def collect_logits(model: nn.Module, batches: Iterable[Batch]) -> CachedLogits:
    """Run `model` once over `batches`, every exit computed, and cache the logits (on the CPU, float32).

    Args:
        model: a classifier with exits (DeiT/ViT/Swin or any model with the adapter methods).
        batches: dicts with `pixel_values` and `labels` (the pipeline's `collate_fn`), or (images, labels) pairs.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    exits, finals, labels = [], [], []
    try:
        with torch.inference_mode():
            for batch in batches:
                pixel_values, batch_labels = _unpack(batch)
                outputs = model(pixel_values.to(device), early_exit=False)
                exits.append(torch.stack(outputs.exit_logits).float().cpu() if outputs.exit_logits else None)
                finals.append(outputs.final_logits.float().cpu())
                labels.append(batch_labels.cpu())
    finally:
        model.train(was_training)
    final_logits = torch.cat(finals)
    exit_logits = torch.cat(exits, dim=1) if exits[0] is not None else final_logits.new_zeros(0, *final_logits.shape)
    return CachedLogits(exit_logits, final_logits, torch.cat(labels), tuple(model.config.exit_positions()),
                        model.config.num_blocks)


@dataclass(frozen=True)
class SweepPoint:
    """What one exit setting achieves on a set of cached logits.

    `accuracy` is a fraction (0..1); `average_flops` is per sample.
    """

    strategy: str
    thresholds: tuple[float, ...]
    patience: int
    accuracy: float
    average_exit_layer: float
    layer_speedup: float
    average_flops: float
    flops_speedup: float

    def settings(self) -> ExitSettings:
        return ExitSettings(self.strategy, self.thresholds, self.patience)

    def speedup(self, kind: str = "flops") -> float:
        """`flops` or `layer` speed-up."""
        return self.flops_speedup if kind == "flops" else self.layer_speedup

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def exit_decisions(cache: CachedLogits, settings: ExitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits each sample leaves with (N, K), exit index (N,): 0..E-1 an exit, E the final classifier).

    `decide_from_logits` writes the "layer" labels we give it; giving it 1..E and E + 1 returns the exit index
    itself, which separates an exit on the last layer from the final classifier.
    """
    indices = list(range(1, cache.num_exits + 1))
    decisions = decide_from_logits(settings, list(cache.exit_logits), cache.final_logits, indices, cache.num_exits + 1)
    return decisions.logits, decisions.exit_layer - 1


def exit_layers_of(cache: CachedLogits, exit_index: torch.Tensor) -> torch.Tensor:
    """1-based exit layer of each sample from its exit index (the final classifier reports `num_blocks`)."""
    layers = torch.tensor(cache.exit_layers + (cache.num_blocks,), dtype=torch.long)
    return layers[exit_index]


def evaluate_settings(cache: CachedLogits, settings: ExitSettings, profile: FlopsProfile) -> SweepPoint:
    """Accuracy, average exit layer and both speed-ups of one exit setting on the cached samples."""
    logits, exit_index = exit_decisions(cache, settings)
    average_layer = float(exit_layers_of(cache, exit_index).double().mean())
    average_flops = float(profile.flops_at_exits(exit_index).mean())
    return SweepPoint(
        strategy=settings.strategy,
        thresholds=tuple(float(t) for t in settings.thresholds),
        patience=settings.patience,
        accuracy=accuracy(logits, cache.labels),
        average_exit_layer=average_layer,
        layer_speedup=cache.num_blocks / average_layer,
        average_flops=average_flops,
        flops_speedup=profile.full_model / average_flops,
    )


def threshold_grid(cache: CachedLogits, strategy: str, num: int = 41) -> list[float]:
    """The criterion's sweep grid on these logits (`models.criteria.ExitCriterion.threshold_grid`): `num` quantiles
    of its scores plus a value no sample passes and one every sample passes; [0.0] without a threshold."""
    return get_criterion(strategy).threshold_grid(cache.exit_logits, num)


def _as_thresholds(value: float | Sequence[float], num_exits: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * num_exits
    if len(value) != num_exits:
        raise ValueError(f"A threshold list has {len(value)} values but the model has {num_exits} exits.")
    return tuple(float(v) for v in value)


def sweep_criterion(cache: CachedLogits, profile: FlopsProfile, strategy: str,
                    thresholds: Sequence[float | Sequence[float]] | None = None,
                    patience_values: Sequence[int] | None = None, num_thresholds: int = 41) -> list[SweepPoint]:
    """Every setting of one criterion: thresholds x patience counts (only what the criterion reads).

    Args:
        thresholds: one float per setting (shared by every exit) or one per-exit list; None uses `threshold_grid`.
        patience_values: for the criteria that count exits; None means 1..E.
    """
    criterion = get_criterion(strategy, field="strategy")
    if not criterion.uses_threshold:
        thresholds = [0.0]
    elif thresholds is None:
        thresholds = threshold_grid(cache, strategy, num_thresholds)
    if criterion.uses_patience:
        patience_values = patience_values or range(1, cache.num_exits + 1)
    else:
        patience_values = [1]
    return [evaluate_settings(cache, ExitSettings(strategy, _as_thresholds(value, cache.num_exits), patience),
                              profile)
            for patience in patience_values for value in thresholds]


def sweep(cache: CachedLogits, profile: FlopsProfile, strategies: Sequence[str] | None = None,
          num_thresholds: int = 41) -> dict[str, list[SweepPoint]]:
    """Every criterion's whole curve on the default grids: {strategy: points}; by default every registered criterion
    (`models.criteria`)."""
    if cache.num_exits == 0:
        raise ValueError("The model has no exits; there is nothing to sweep.")
    curves = {strategy: sweep_criterion(cache, profile, strategy, num_thresholds=num_thresholds)
              for strategy in (strategies or list(EXIT_CRITERIA))}
    logger.info("Swept %s on %d samples.", {name: len(points) for name, points in curves.items()}, len(cache))
    return curves


def pareto_front(points: Sequence[SweepPoint], speedup: str = "flops") -> list[SweepPoint]:
    """The points no other point beats in both accuracy and speed-up, by increasing speed-up."""
    front: list[SweepPoint] = []
    for point in sorted(points, key=lambda p: (-p.speedup(speedup), -p.accuracy)):
        if not front or point.accuracy > front[-1].accuracy:
            front.append(point)
    return front[::-1]


def save_sweep(curves: Mapping[str, Sequence[SweepPoint]], path: str | Path,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write the curves (and e.g. the final accuracy or the FLOPs profile in `extra`) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"curves": {name: [p.as_dict() for p in points] for name, points in curves.items()}, **(extra or {})}
    path.write_text(json.dumps(content, indent=1))
    return path


def load_sweep(path: str | Path) -> dict[str, list[SweepPoint]]:
    """The curves written by `save_sweep`."""
    content = json.loads(Path(path).read_text())
    return {name: [SweepPoint(**{**p, "thresholds": tuple(p["thresholds"])}) for p in points]
            for name, points in content["curves"].items()}

"""Figures of an accuracy-speed analysis, written as PNG files (matplotlib's Agg canvas, no display needed).

- `plot_tradeoff`: accuracy vs speed-up, one curve per label: the criteria of one model, or several methods.
- `plot_exit_histogram`: how many samples left at each layer.
- `plot_exit_accuracy`: the accuracy of each exit (every sample read there) and of the final classifier.
Each `plot_*` draws its figure with the matching `*_figure` function (which returns the matplotlib Figure) and
writes it with `save_figure`. `log_figures_to_wandb` sends written figures to the active wandb run, if there is one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .sweep import SweepPoint, pareto_front

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

_SPEEDUP_LABELS = {"flops": "FLOPs speed-up (full model / average per sample)",
                   "layer": "layer speed-up (layers / average exit layer)"}


def new_figure(width: float = 6.4, height: float = 4.4) -> Figure:
    """An empty figure on its own Agg canvas (inches)."""
    # matplotlib is imported on the first figure, not with this module: a training launch draws none and starts faster.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)  # an explicit Agg canvas: no pyplot, no global backend
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as a PNG file (parent directories created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    logger.info("Wrote %s", path)
    return path


def plot_tradeoff(curves: Mapping[str, Sequence[SweepPoint]], path: str | Path, speedup: str = "flops",
                  reference_accuracy: float | None = None, title: str | None = None,
                  reference_label: str = "final classifier", accuracy_floor: float | None = None) -> Path:
    """`tradeoff_figure` written to `path` as a PNG."""
    return save_figure(tradeoff_figure(curves, speedup, reference_accuracy, title, reference_label, accuracy_floor),
                       path)


def tradeoff_figure(curves: Mapping[str, Sequence[SweepPoint]], speedup: str = "flops",
                    reference_accuracy: float | None = None, title: str | None = None,
                    reference_label: str = "final classifier", accuracy_floor: float | None = None) -> Figure:
    """Accuracy (%) vs speed-up, one curve per entry of `curves`.

    Each curve is its Pareto front (every setting no other setting beats in both), drawn over a faint scatter of
    all its settings, so two-parameter criteria (patient_and_confident) read as one line.

    Args:
        curves: label -> sweep points, e.g. `utils.analysis.sweep.sweep(...)` or {"LGViT": ..., "PABEE": ...}.
        speedup: `flops` or `layer`.
        reference_accuracy: the final classifier's accuracy (fraction), drawn as a dashed line labelled
            `reference_label`.
        accuracy_floor: leave out settings less accurate than this (fraction), to zoom on the useful range.
    """
    figure = new_figure()
    axes = figure.add_subplot()
    for label, points in curves.items():
        if accuracy_floor is not None:
            points = [p for p in points if p.accuracy >= accuracy_floor]
        front = pareto_front(points, speedup)
        line, = axes.plot([p.speedup(speedup) for p in front], [100 * p.accuracy for p in front], marker="o",
                          markersize=3, label=label)
        axes.scatter([p.speedup(speedup) for p in points], [100 * p.accuracy for p in points], s=5, alpha=0.2,
                     color=line.get_color())
    if reference_accuracy is not None:
        axes.axhline(100 * reference_accuracy, color="grey", linestyle="--", linewidth=1, label=reference_label)
    axes.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel(_SPEEDUP_LABELS[speedup])
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title or "Accuracy vs speed-up")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def plot_exit_histogram(exit_layer: torch.Tensor, num_blocks: int, path: str | Path,
                        exit_layers: Sequence[int] = (), title: str | None = None) -> Path:
    """`exit_histogram_figure` written to `path` as a PNG."""
    return save_figure(exit_histogram_figure(exit_layer, num_blocks, exit_layers, title), path)


def exit_histogram_figure(exit_layer: torch.Tensor, num_blocks: int, exit_layers: Sequence[int] = (),
                          title: str | None = None) -> Figure:
    """Bar chart of the samples that left at each layer 1..num_blocks (`exit_layer` as the models report it).

    Layers carrying an exit (`exit_layers`) are drawn darker; the last layer includes the final classifier.
    """
    counts = torch.bincount(exit_layer.long().cpu(), minlength=num_blocks + 1)[1:num_blocks + 1]
    layers = list(range(1, num_blocks + 1))
    colors = ["tab:blue" if layer in exit_layers else "tab:grey" for layer in layers]
    colors[-1] = "tab:orange"
    figure = new_figure()
    axes = figure.add_subplot()
    axes.bar(layers, counts.tolist(), color=colors)
    average = float(exit_layer.double().mean()) if exit_layer.numel() else float("nan")
    axes.axvline(average, color="black", linestyle="--", linewidth=1, label=f"average {average:.2f}")
    axes.set_xticks(layers)
    axes.set_xlabel(f"exit layer (layer {num_blocks}: final classifier)")
    axes.set_ylabel("samples")
    axes.set_title(title or "Where samples left the network")
    axes.legend(fontsize="small")
    return figure


def plot_exit_accuracy(exit_accuracies: Sequence[float], exit_layers: Sequence[int], final_accuracy: float,
                       num_blocks: int, path: str | Path, title: str | None = None) -> Path:
    """`exit_accuracy_figure` written to `path` as a PNG."""
    return save_figure(exit_accuracy_figure(exit_accuracies, exit_layers, final_accuracy, num_blocks, title), path)


def exit_accuracy_figure(exit_accuracies: Sequence[float], exit_layers: Sequence[int], final_accuracy: float,
                         num_blocks: int, title: str | None = None) -> Figure:
    """Accuracy (%) of every exit and of the final classifier, by layer."""
    figure = new_figure()
    axes = figure.add_subplot()
    axes.plot(list(exit_layers), [100 * a for a in exit_accuracies], marker="o", label="exit heads")
    axes.scatter([num_blocks], [100 * final_accuracy], marker="*", s=120, color="tab:red", label="final classifier",
                 zorder=3)
    axes.set_xticks(list(range(1, num_blocks + 1)))
    axes.set_xlabel("layer")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title or "Accuracy of each exit")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def log_figures_to_wandb(figures: Mapping[str, str | Path], prefix: str = "analysis") -> bool:
    """Log written PNGs as `wandb.Image`s under `prefix/name` to the active run; False when no run is active."""
    try:
        import wandb
    except ImportError:
        return False
    if wandb.run is None:
        return False
    wandb.log({f"{prefix}/{name}": wandb.Image(str(path)) for name, path in figures.items()})
    return True

"""One PNG with the per-exit dashboard of a method's runs, drawn from the TensorBoard event files the runs wrote
(`--report_to tensorboard`), so no TensorBoard server or wandb account is needed to look at them or to put them in
a report. One row per run, four panels:

1. each exit's cross-entropy (`train/loss_exit_<layer>`) over the training steps;
2. the loss by kind of term: the sum over exits of weight x term for the cross-entropies, prediction distillation
   (`_kd`) and feature distillation (`_hete`, `_homo`), and the logged `train/loss`, which they add up to;
3. each exit's own accuracy at every evaluation (`eval/accuracy_exit_<layer>`);
4. where the samples left at the last evaluation (`eval/exit_distribution`).

Usage: python -m utils.analysis.dashboard_figure <run dir> [<run dir> ...] --output dashboard.png
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from matplotlib import colormaps
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from utils.analysis.plots import new_figure, save_figure

TERM = re.compile(r"^train/loss_exit_(?P<layer>\d+|final)(?:_(?P<part>kd|hete|homo))?$")
PARTS = {None: "cross-entropy", "kd": "prediction distillation", "hete": "heterogeneous", "homo": "homogeneous"}


def read_events(run_dir: str | Path) -> EventAccumulator:
    """The TensorBoard events of a run's output directory (its newest log directory under `runs/`)."""
    log_dirs = sorted((Path(run_dir) / "runs").glob("*"), key=lambda path: path.stat().st_mtime)
    if not log_dirs:
        raise FileNotFoundError(f"{run_dir}/runs holds no TensorBoard logs: was the run made with "
                                "--report_to tensorboard (or all)?")
    events = EventAccumulator(str(log_dirs[-1]), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def _series(events: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    scalars = events.Scalars(tag)
    return [event.step for event in scalars], [event.value for event in scalars]


def _layer_order(name: str) -> float:
    return float("inf") if name == "final" else int(name)


def _colors(layers: list[str]) -> dict[str, tuple]:
    palette = colormaps["viridis"]
    return {layer: palette(index / max(len(layers) - 1, 1)) for index, layer in enumerate(layers)}


def _draw_run(axes: list, events: EventAccumulator, title: str) -> None:
    tags = events.Tags()["scalars"]
    terms = {tag: TERM.match(tag) for tag in tags if TERM.match(tag)}
    layers = sorted({match["layer"] for match in terms.values()}, key=_layer_order)
    colors = _colors(layers)
    for tag, match in terms.items():
        if match["part"] is None:
            axes[0].plot(*_series(events, tag), color=colors[match["layer"]], label=f"layer {match['layer']}")
    by_part: dict[str | None, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for tag, match in terms.items():
        weights = dict(zip(*_series(events, tag.replace("train/loss_", "train/loss_weight_"))))
        for step, value in zip(*_series(events, tag)):
            by_part[match["part"]][step] += weights[step] * value
    for part, values in by_part.items():
        axes[1].plot(list(values), list(values.values()), label=PARTS[part])
    axes[1].plot(*_series(events, "train/loss"), color="black", linestyle="--", linewidth=1, label="loss")
    for layer in layers:
        if f"eval/accuracy_exit_{layer}" in tags:
            steps, values = _series(events, f"eval/accuracy_exit_{layer}")
            axes[2].plot(steps, [100 * value for value in values], marker=".", color=colors[layer],
                         label=f"layer {layer}")
    _draw_distribution(axes[3], events)
    speed = _series(events, "train/images_per_second")[1] if "train/images_per_second" in tags else []
    axes[0].set_ylabel(title + (f"\n{sorted(speed)[len(speed) // 2]:.0f} training images/s" if speed else ""))
    for ax, (name, unit) in zip(axes[:3], [("each exit's cross-entropy", "loss"), ("loss by kind of term", "loss"),
                                             ("each exit's accuracy", "accuracy (%)")]):
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2)
    axes[1].set_yscale("log")


def _draw_distribution(ax, events: EventAccumulator) -> None:
    histograms = events.Histograms("eval/exit_distribution") if "eval/exit_distribution" in events.Tags()[
        "histograms"] else []
    if histograms:
        value = histograms[-1].histogram_value
        layers = [round(limit - 0.5) for limit in value.bucket_limit]
        ax.bar(layers, value.bucket, color="tab:blue")
        ax.set_xticks(layers)
    ax.set_title("where samples left (last evaluation)")
    ax.set_xlabel("exit layer (last: final classifier)")
    ax.set_ylabel("samples")


def dashboard_figure(run_dirs: list[str | Path], titles: list[str] | None = None):
    """The figure: one row of four panels per run (see the module docstring)."""
    figure = new_figure(width=18, height=3.8 * len(run_dirs))
    grid = figure.subplots(len(run_dirs), 4, squeeze=False)
    for row, run_dir, title in zip(grid, run_dirs, titles or [Path(path).name for path in run_dirs]):
        _draw_run(list(row), read_events(run_dir), title)
    return figure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.analysis.dashboard_figure",
                                     description="Draw the per-exit dashboard of runs from their TensorBoard logs.")
    parser.add_argument("run_dirs", nargs="+", help="output directories of runs made with --report_to tensorboard")
    parser.add_argument("--titles", nargs="+", help="one row title per run (default: the directory names)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.titles and len(args.titles) != len(args.run_dirs):
        raise SystemExit(f"--titles needs one title per run directory ({len(args.run_dirs)}).")
    return save_figure(dashboard_figure(args.run_dirs, args.titles), args.output)


if __name__ == "__main__":
    main()

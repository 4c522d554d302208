"""The analysis figures: what each one draws (its axes' data), and that they are written as PNG files; wandb
logging is skipped without an active run."""

from collections import Counter

import pytest
import torch
import wandb
from analysis_helpers import synthetic_cache, synthetic_profile

from utils.analysis.plots import (
    exit_accuracy_figure,
    exit_histogram_figure,
    log_figures_to_wandb,
    plot_exit_accuracy,
    plot_exit_histogram,
    plot_tradeoff,
    tradeoff_figure,
)
from utils.analysis.sweep import exit_decisions, exit_layers_of, sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > min_bytes, (path, len(data))


def test_every_figure_is_written(tmp_path):
    cache, profile = synthetic_cache(), synthetic_profile()
    curves = sweep(cache, profile, num_thresholds=11)
    figures = {
        "criteria": plot_tradeoff(curves, tmp_path / "criteria.png", reference_accuracy=cache.final_accuracy()),
        "criteria_layers": plot_tradeoff(curves, tmp_path / "layers.png", speedup="layer"),
        "methods": plot_tradeoff({"method A (entropy)": curves["entropy"], "method B (patience)": curves["patience"]},
                                 tmp_path / "methods.png", title="Two methods"),
    }
    _, exit_index = exit_decisions(cache, curves["confidence"][len(curves["confidence"]) // 2].settings())
    figures["histogram"] = plot_exit_histogram(exit_layers_of(cache, exit_index), cache.num_blocks,
                                               tmp_path / "nested" / "histogram.png", cache.exit_layers)
    figures["exit_accuracy"] = plot_exit_accuracy(cache.exit_accuracies(), cache.exit_layers, cache.final_accuracy(),
                                                  cache.num_blocks, tmp_path / "exit_accuracy.png")
    for path in figures.values():
        assert_png(path)
    assert not log_figures_to_wandb(figures)  # tests run without a wandb run


def test_histogram_of_an_empty_layer_range_still_draws(tmp_path):
    path = plot_exit_histogram(torch.full((5,), 12), 12, tmp_path / "all_final.png")
    assert_png(path, min_bytes=5_000)


def test_figures_go_to_an_active_wandb_run(tmp_path):
    path = plot_exit_histogram(torch.tensor([1, 2, 2, 3]), 3, tmp_path / "histogram.png")
    run = wandb.init(mode="disabled")  # a run object that logs nothing
    try:
        assert log_figures_to_wandb({"histogram": path})
    finally:
        run.finish()
        wandb.teardown()  # end wandb's session, so later runs in this process set their own mode and directory


def front_of(pairs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (speed-up, accuracy) pairs no other pair matches or beats in both, by increasing speed-up."""
    distinct = set(pairs)
    return sorted(p for p in distinct if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in distinct))


def line_points(line) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata())]


def assert_same_points(drawn, expected) -> None:
    """Equal lists of (x, y) points, up to float rounding."""
    assert len(drawn) == len(expected), (drawn, expected)
    assert [v for point in drawn for v in point] == pytest.approx([float(v) for point in expected for v in point])


@pytest.mark.parametrize("speedup", ["flops", "layer"])
def test_tradeoff_draws_each_criterion_as_its_pareto_front_over_every_setting(speedup):
    cache, profile = synthetic_cache(), synthetic_profile()
    curves = sweep(cache, profile, num_thresholds=11)
    figure = tradeoff_figure(curves, speedup=speedup, reference_accuracy=0.5)
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert set(curves) <= set(lines)
    for name, points in curves.items():
        pairs = [(p.speedup(speedup), 100 * p.accuracy) for p in points]
        drawn = line_points(lines[name])
        assert_same_points(drawn, front_of(pairs))
        assert len(drawn) < len(set(pairs))  # some settings are dominated, and left off the line
    # Every setting is in the faint scatter, one per criterion, in the curves' order.
    for points, scatter in zip(curves.values(), axes.collections):
        assert_same_points(scatter.get_offsets().tolist(), [(p.speedup(speedup), 100 * p.accuracy) for p in points])
    assert line_points(lines["final classifier"])[0][1] == pytest.approx(50.0)


def test_tradeoff_accuracy_floor_leaves_out_the_settings_below_it():
    cache, profile = synthetic_cache(), synthetic_profile()
    points = sweep(cache, profile, num_thresholds=11)["entropy"]
    floor = sorted(p.accuracy for p in points)[len(points) // 2]
    axes = tradeoff_figure({"entropy": points}, accuracy_floor=floor).axes[0]
    kept = [(p.flops_speedup, 100 * p.accuracy) for p in points if p.accuracy >= floor]
    assert_same_points(line_points(axes.get_lines()[0]), front_of(kept))
    assert len(axes.collections[0].get_offsets()) == len(kept) < len(points)


def test_histogram_bars_are_the_exit_counts():
    exit_layer = torch.tensor([1, 3, 3, 7, 7, 7, 4, 3, 7, 1])
    axes = exit_histogram_figure(exit_layer, 7, exit_layers=(1, 3, 4)).axes[0]
    counts = Counter(exit_layer.tolist())
    assert_same_points([(bar.get_x() + bar.get_width() / 2, bar.get_height()) for bar in axes.patches],
                       [(layer, counts.get(layer, 0)) for layer in range(1, 8)])
    average = [line for line in axes.get_lines() if line.get_label().startswith("average")][0]
    assert float(average.get_xdata()[0]) == pytest.approx(sum(exit_layer.tolist()) / 10)


def test_exit_accuracy_line_holds_each_exits_accuracy():
    cache = synthetic_cache()
    expected = [100 * (logits.argmax(-1) == cache.labels).double().mean().item() for logits in cache.exit_logits]
    final = 100 * (cache.final_logits.argmax(-1) == cache.labels).double().mean().item()
    axes = exit_accuracy_figure(cache.exit_accuracies(), cache.exit_layers, cache.final_accuracy(),
                                cache.num_blocks).axes[0]
    line = [line for line in axes.get_lines() if line.get_label() == "exit heads"][0]
    assert_same_points(line_points(line), list(zip(cache.exit_layers, expected)))
    assert_same_points(axes.collections[0].get_offsets().tolist(), [(cache.num_blocks, final)])

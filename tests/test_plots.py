"""The analysis figures are written as non-empty PNG files; wandb logging is skipped without an active run."""

import pytest
import torch
from analysis_helpers import synthetic_cache, synthetic_profile

from utils.plots import log_figures_to_wandb, plot_exit_accuracy, plot_exit_histogram, plot_tradeoff
from utils.sweep import exit_decisions, exit_layers_of, sweep

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
    figures["histogram"] = plot_exit_histogram(exit_layers_of(cache, exit_index), cache.num_layers,
                                               tmp_path / "nested" / "histogram.png", cache.exit_layers)
    figures["exit_accuracy"] = plot_exit_accuracy(cache.exit_accuracies(), cache.exit_layers, cache.final_accuracy(),
                                                  cache.num_layers, tmp_path / "exit_accuracy.png")
    for path in figures.values():
        assert_png(path)
    assert not log_figures_to_wandb(figures)  # tests run without a wandb run


def test_histogram_of_an_empty_layer_range_still_draws(tmp_path):
    path = plot_exit_histogram(torch.full((5,), 12), 12, tmp_path / "all_final.png")
    assert_png(path, min_bytes=5_000)


def test_figures_go_to_an_active_wandb_run(tmp_path):
    wandb = pytest.importorskip("wandb")
    path = plot_exit_histogram(torch.tensor([1, 2, 2, 3]), 3, tmp_path / "histogram.png")
    run = wandb.init(mode="disabled")  # a run object that logs nothing
    try:
        assert log_figures_to_wandb({"histogram": path})
    finally:
        run.finish()

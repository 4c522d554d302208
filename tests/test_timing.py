"""The measured speed-up (utils.timing) on a clock that counts work instead of seconds.

No assertion here reads wall-clock time. Forward hooks count the work each timed call does: every backbone block
adds the number of rows it ran on, every exit head a tenth of that; the clock returns the running total. The
"measured" ratio is then exact, so it says which parts each path ran: the reference runs every block and no exit
head, early exit runs the blocks up to each sample's exit and the heads it read.
"""

from __future__ import annotations

import pytest
import torch
from analysis_helpers import images, tiny_model, tiny_swin

from utils.analysis.timing import measure_speedup, median_times, stepwise_round_times

BLOCK_WORK, HEAD_WORK = 1.0, 0.1


class WorkClock:
    """Counts block and head rows through forward hooks; calling it returns the total work so far."""

    def __init__(self, blocks: list[torch.nn.Module], heads: list[torch.nn.Module]) -> None:
        self.total = 0.0
        self.block_rows = 0
        self.head_rows = 0
        self.handles = [block.register_forward_hook(self.block_hook) for block in blocks]
        self.handles += [head.register_forward_hook(self.head_hook) for head in heads]

    def block_hook(self, module, inputs, output) -> None:
        rows = inputs[0].shape[0]
        self.block_rows += rows
        self.total += BLOCK_WORK * rows

    def head_hook(self, module, inputs, output) -> None:
        rows = inputs[0].shape[0]
        self.head_rows += rows
        self.total += HEAD_WORK * rows

    def __call__(self) -> float:
        return self.total

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def deit_with_clock() -> tuple[torch.nn.Module, WorkClock, int]:
    model = tiny_model()  # 6 blocks, an exit after each (the last one on the last block)
    clock = WorkClock(list(model.backbone_model.layers), list(model.exits))
    return model, clock, 6


def swin_with_clock() -> tuple[torch.nn.Module, WorkClock, int]:
    model = tiny_swin()  # 7 blocks over 3 stages, exits on layers 2, 4, 5, 7
    blocks = [block for stage in model.swin.encoder.layers for block in stage.blocks]
    return model, WorkClock(blocks, list(model.exits)), 7


BACKBONES = {"DeiT": (deit_with_clock, 16), "Swin": (swin_with_clock, 32)}


def test_median_times_reads_the_clock_it_is_given() -> None:
    work = {"total": 0.0}

    def way(amount: float):
        def run() -> None:
            work["total"] += amount
        return run

    times = median_times({"light": way(1.0), "heavy": way(5.0)}, repeats=3, clock=lambda: work["total"])
    assert times == {"light": 1.0, "heavy": 5.0}


def test_stepwise_rounds_alternate_the_ways_at_every_step_and_add_up_their_steps() -> None:
    work, calls = {"total": 0.0}, []

    def step(name: str, amount: float):
        def run() -> None:
            calls.append(name)
            work["total"] += amount
        return run

    ways = {"a": [step("a", 1.0), step("a", 2.0)], "b": [step("b", 10.0), step("b", 20.0)]}
    times = stepwise_round_times(ways, repeats=2, clock=lambda: work["total"])
    assert times == {"a": [3.0, 3.0], "b": [30.0, 30.0]}
    # After one warm-up pass of each way, every step runs in both ways before the next step, the order rotating.
    assert calls[4:] == ["a", "b", "b", "a", "b", "a", "a", "b"]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_reference_runs_every_block_and_no_exit_head(backbone: str) -> None:
    make, size = BACKBONES[backbone]
    model, clock, num_layers = make()
    model.config.exit_strategy, model.config.threshold = "confidence", 0.0  # early exit leaves at the first exit
    pixel_values = images(12, size=size)
    measured = measure_speedup(model, pixel_values, batch_size=5, repeats=3, clock=clock)
    # Per timed pass: 12 rows through every block, no head; the first exit's layer and one head for early exit.
    first_layer = model.config.exit_positions()[0]
    full_work = num_layers * 12 * BLOCK_WORK
    early_work = first_layer * 12 * BLOCK_WORK + 12 * HEAD_WORK
    assert measured["full_model_images_per_second"] == pytest.approx(12 / full_work, rel=1e-12)
    assert measured["early_exit_images_per_second"] == pytest.approx(12 / early_work, rel=1e-12)
    clock.remove()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_speedup_is_the_work_ratio_when_every_sample_leaves_at_the_first_exit(backbone: str) -> None:
    make, size = BACKBONES[backbone]
    model, clock, num_layers = make()
    model.config.exit_strategy, model.config.threshold = "confidence", 0.0
    first_layer = model.config.exit_positions()[0]
    measured = measure_speedup(model, images(10, size=size), batch_size=4, repeats=3, clock=clock)
    expected = (num_layers * BLOCK_WORK) / (first_layer * BLOCK_WORK + HEAD_WORK)
    assert measured["measured_speedup"] == pytest.approx(expected, rel=1e-12)
    assert measured["measured_speedup"] > 2.5
    # Warm-up and three rounds of each way, full model first: the heads ran only in the early-exit passes.
    assert clock.head_rows == 4 * 10 and clock.block_rows == 4 * 10 * (num_layers + first_layer)
    clock.remove()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_early_exit_that_never_fires_costs_more_than_the_full_model(backbone: str) -> None:
    make, size = BACKBONES[backbone]
    model, clock, num_layers = make()
    model.config.exit_strategy, model.config.threshold = "confidence", 1.0  # a softmax never exceeds 1
    num_exits = len(model.exits)
    measured = measure_speedup(model, images(10, size=size), batch_size=4, repeats=3, clock=clock)
    expected = num_layers * BLOCK_WORK / (num_layers * BLOCK_WORK + num_exits * HEAD_WORK)
    assert measured["measured_speedup"] == pytest.approx(expected, rel=1e-12)
    assert measured["measured_speedup"] < 1.0
    clock.remove()


def test_the_speedup_is_the_median_of_paired_rounds_and_reports_their_range() -> None:
    """Each round times both paths back to back; a round slowed down for one path shows in the range, and the
    median round is the reported value."""
    model, clock, num_blocks = deit_with_clock()
    model.config.exit_strategy, model.config.threshold = "confidence", 0.0  # every sample leaves at exit 1
    slow = {"round": 0}
    full_forward = type(model).final_logits

    def slower_in_round_two(self, hidden):  # the reference's final head costs extra work in one round only
        slow["round"] += 1
        clock.total += 100.0 if slow["round"] == 3 else 0.0
        return full_forward(self, hidden)

    type(model).final_logits = slower_in_round_two
    try:
        result = measure_speedup(model, images(4, size=16), batch_size=4, repeats=5, clock=clock)
    finally:
        type(model).final_logits = full_forward
        clock.remove()
    ordinary = 4 * num_blocks * BLOCK_WORK / (4 * BLOCK_WORK + 4 * HEAD_WORK)
    assert result["measured_speedup"] == pytest.approx(ordinary)
    assert result["measured_speedup_range"][0] == pytest.approx(ordinary)
    assert result["measured_speedup_range"][1] > ordinary + 10 and result["timed_rounds"] == 5


def test_a_measured_speedup_above_the_layer_speedup_is_reported_broken() -> None:
    from utils.analysis.compare_methods import measured_cell
    from utils.analysis.report import measured_speedup_is_valid

    report = {"measured_speedup": 3.2, "measured_speedup_range": [3.0, 3.4], "layer_speedup": 3.0,
              "flops_speedup": 2.9}
    assert not measured_speedup_is_valid(report)
    assert measured_speedup_is_valid({**report, "measured_speedup": 2.8})
    row = {**report, "measured_speedup_valid": False}
    assert measured_cell(row) == "broken (3.20 > layers 3.00)"
    assert measured_cell({**row, "measured_speedup": 2.8, "measured_speedup_valid": True}) == "2.80 (3.00-3.40)"
    assert measured_cell({**row, "measured_speedup": None}) == "-"

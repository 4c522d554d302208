"""The measured speed-up (utils.timing) on a clock that counts work instead of seconds, and the images it times.

No assertion here reads wall-clock time. Forward hooks count the work each timed call does: every backbone block
adds the number of rows it ran on, every exit head a tenth of that; the clock returns the running total. The
"measured" ratio is then exact, so it says which parts each path ran: the reference runs every block and no exit
head, early exit runs the blocks up to each sample's exit and the heads it read.
"""

from __future__ import annotations

import pytest
import torch
from analysis_helpers import images, tiny_model, tiny_swin

from utils.analysis.flops import profile_flops
from utils.analysis.report import ModelRuns, timed_speedup
from utils.analysis.timing import measure_speedup, median_times, stepwise_round_times, timing_sample
from utils.arguments import AnalysisArguments
from utils.data.transforms import Normalization

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

    report = {"measured_speedup": 3.2, "measured_speedup_range": [3.0, 3.4], "layer_speedup": 3.5,
              "timed_layer_speedup": 3.0, "flops_speedup": 2.9}
    assert not measured_speedup_is_valid(report)
    assert measured_speedup_is_valid({**report, "measured_speedup": 2.8})
    row = {**report, "measured_speedup_valid": False}
    assert measured_cell(row) == "broken (3.20 > layers 3.00 of the timed images)"  # not the split's 3.5
    assert measured_cell({**row, "measured_speedup": 2.8, "measured_speedup_valid": True}) == "2.80 (3.00-3.40)"
    assert measured_cell({**row, "measured_speedup": None}) == "-"


def test_a_measured_speedup_is_checked_against_the_timed_images_layer_speedup() -> None:
    from utils.analysis.report import measured_speedup_is_valid

    report = {"measured_speedup": 2.5, "measured_speedup_range": [2.4, 2.6], "layer_speedup": 2.0}
    assert measured_speedup_is_valid({**report, "timed_layer_speedup": 3.0})
    assert not measured_speedup_is_valid({**report, "layer_speedup": 3.0, "timed_layer_speedup": 2.0})


def test_the_timed_images_are_a_seeded_draw_across_a_split_stored_class_by_class() -> None:
    """5,000 images of 10 classes stored in class order: the first 1,024 rows would hold classes 0-2 only."""
    labels = torch.arange(10).repeat_interleave(500)
    drawn = timing_sample(len(labels), 1024, seed=777)
    assert len(drawn) == len(set(drawn)) == 1024 and drawn == timing_sample(len(labels), 1024, seed=777)
    assert drawn != timing_sample(len(labels), 1024, seed=778)
    counts = torch.bincount(labels[drawn], minlength=10)
    assert counts.min() >= 60 and counts.max() <= 150, counts  # about 102 of each class
    assert sorted(timing_sample(7, 1024, seed=1)) == list(range(7))  # a small split is timed whole


class ClassOrderedImages(torch.utils.data.Dataset):
    """32 copies of one image (class 0), then 32 of another (class 1), as uint8 like an `ImageDataset`'s."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor) -> None:
        self.pixels = torch.cat([first.expand(32, -1, -1, -1), second.expand(32, -1, -1, -1)])
        self.normalization = Normalization([0.5] * 3, [0.25] * 3)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixels[index], "labels": int(index >= 32)}


def test_the_measurement_is_compared_with_the_timed_images_own_speedups() -> None:
    """The class-0 image leaves at the first exit, the class-1 image at the final classifier: the speed-ups of the
    eight timed images follow from how many of each were drawn, not from the whole split's (or the first rows')."""
    model = tiny_model()
    pair = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    dataset = ClassOrderedImages(*pair)
    with torch.no_grad():
        confidence = model(dataset.normalization(pair), early_exit=False).exit_logits[0].softmax(-1).amax(-1)
    dataset = ClassOrderedImages(*(pair if confidence[0] > confidence[1] else pair.flip(0)))
    model.config.exit_strategy = "confidence"
    model.config.threshold = [float(confidence.mean())] + [1.0] * 5  # only the first exit, only the one image
    args = AnalysisArguments(measure_speedup=True, speed_samples=8, speed_repeats=1)
    profile = profile_flops(model)
    report = timed_speedup(model, dataset, profile, args, ModelRuns(4), seed=3)
    drawn = timing_sample(len(dataset), 8, seed=3)
    late = sum(index >= 32 for index in drawn)
    assert 0 < late < 8 and report["timed_images"] == 8 and report["timing_seed"] == 3
    assert report["timed_layer_speedup"] == pytest.approx(6 * 8 / (8 - late + 6 * late), rel=1e-12)
    first_exit, every_head = profile.exit_costs()[[0, -1]].tolist()  # the final classifier pays for every head
    expected_flops = profile.full_model * 8 / ((8 - late) * first_exit + late * every_head)
    assert report["timed_flops_speedup"] == pytest.approx(expected_flops, rel=1e-9)
    assert report["measured_over_flops_speedup"] == pytest.approx(report["measured_speedup"] / expected_flops)
    assert report["measured_speedup_valid"] == (report["measured_speedup"] <= report["timed_layer_speedup"])

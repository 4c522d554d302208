"""Segments of an early-exit forward pass: the units that eager runs, `torch.compile` and ONNX export share.

Segment k runs the blocks after exit k-1 up to exit k's layer and then exit k's head; the first segment also embeds
the images, and the last one runs the remaining blocks and the final classifier. Between segments the exit
decision is taken (`models.exiting.run_early_exit`) and the batch shrinks, so each segment only ever sees the rows
that are still running. A segment has no data-dependent control flow: it traces and compiles without graph breaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .exiting import ExitingBackbone, SegmentRun


@dataclass(frozen=True)
class Segment:
    """Blocks `start`..`stop - 1` (0-based), then exit head `exit_index`, or the final classifier when it is None.

    The first segment (`start` == 0) takes images and embeds them; the others take hidden states.
    """

    start: int
    stop: int
    exit_index: int | None

    @property
    def embeds(self) -> bool:
        return self.start == 0

    @property
    def is_final(self) -> bool:
        return self.exit_index is None


def plan_segments(exit_layers: Sequence[int], num_blocks: int) -> list[Segment]:
    """One segment per exit (1-based `exit_layers`, increasing), then the final segment."""
    bounds = [0, *exit_layers, num_blocks]
    return [Segment(bounds[k], bounds[k + 1], k if k < len(exit_layers) else None) for k in range(len(bounds) - 1)]


def run_segment(model: ExitingBackbone, segment: Segment, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one segment of `model`. Returns (the next segment's input, this segment's logits)."""
    hidden = model.embed(inputs) if segment.embeds else inputs
    tapped = hidden
    for index in range(segment.start, segment.stop):
        tapped, hidden = model.run_layer(index, hidden)
    if segment.is_final:
        return hidden, model.final_logits(hidden)
    return hidden, model.exits[segment.exit_index](tapped)[0]


def segment_runs(model: ExitingBackbone, segments: Sequence[Segment]) -> list[SegmentRun]:
    """The run of every segment: `run_segment` bound to the model and the segment.

    Each run gets its own code object, because `torch.compile` keeps compiled graphs per code object: runs sharing
    one would share one cache, and every segment would count as a recompilation of the others.
    """
    runs = []
    for index, segment in enumerate(segments):
        run = _bind(model, segment)
        run.__code__ = run.__code__.replace(co_name=f"run_segment_{index}")
        runs.append(run)
    return runs


def _bind(model: ExitingBackbone, segment: Segment) -> SegmentRun:
    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run_segment(model, segment, inputs)

    return run


class SegmentModule(nn.Module):
    """One segment as a module, for export: images or hidden states in, (hidden states, logits) out (the final
    segment: logits only)."""

    def __init__(self, model: nn.Module, segment: Segment):
        super().__init__()
        self.model = model
        self.segment = segment

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        hidden, logits = run_segment(self.model, self.segment, inputs)
        return logits if self.segment.is_final else (hidden, logits)

"""The batched early-exit runner.

Nothing here knows which backbone it drives. A backbone is anything with the `ExitingBackbone` methods: embed the
images, run block i, run an exit head, give the final prediction. The blocks are grouped into segments
(`models.segments`): the blocks up to an exit plus that exit's head, ..., the last blocks plus the final classifier.
After each exit segment the criterion (`models.criteria`) decides per sample; rows that leave are removed from the
batch and the remaining rows run on. A batch of N therefore gives the exit layers and logits of N runs at batch
size 1 while samples that left stop costing compute. Segments may be compiled (`EarlyExitMixin.compile_exits`);
the decisions stay here, in eager code, on every path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .criteria import get_criterion
from .exit_settings import ExitSettings

# A segment run: (input, the previous segment's hidden states or the images) -> (hidden states, logits).
SegmentRun = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class ExitingBackbone(Protocol):
    """What the runner and the analysis tools need from a backbone with exits (see the DeiT and Swin models)."""

    exits: nn.ModuleList

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def run_layer(self, index: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run block `index`; return (the block output an exit reads, the input of the next block)."""

    def final_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final classifier's logits from the last block's output."""


@dataclass
class ExitDecisions:
    """Per-sample result of an early-exit pass: logits (B, K) each sample left with, 1-based exit layer (B,)."""

    logits: torch.Tensor
    exit_layer: torch.Tensor


def run_early_exit(segments: Sequence[SegmentRun], pixel_values: torch.Tensor, settings: ExitSettings,
                   exit_layers: Sequence[int], num_blocks: int) -> ExitDecisions:
    """Run the segments, stopping each sample at the first exit whose criterion fires.

    Args:
        segments: one run per exit, then the final one (`models.segments.segment_runs`).
        pixel_values: (B, 3, H, W) images.
        settings: the criterion, one threshold per exit and the patience count.
        exit_layers: 1-based layer of each exit.
        num_blocks: the exit layer reported when the final classifier answers.
    """
    criterion = get_criterion(settings.strategy)
    batch_size, device = pixel_values.shape[0], pixel_values.device
    state = criterion.initial_state(batch_size, device)
    exit_layer = torch.full((batch_size,), num_blocks, dtype=torch.long, device=device)
    # Rows still running, as indices into the batch, and the logits of the rows that left; both are made at the
    # first exit where some (not all) rows leave. Until then every row runs, and no bookkeeping is needed: at batch
    # size 1 a sample never pays for it (a few tensor operations cost as much as a small exit head there).
    running: torch.Tensor | None = None
    logits_out: torch.Tensor | None = None
    hidden = pixel_values
    for index, run in enumerate(segments[:-1]):
        hidden, logits = run(hidden)
        leaving, state = criterion.step(logits, settings.thresholds[index], settings.patience, state)
        if running is None and bool(leaving.all()):
            return ExitDecisions(logits, exit_layer.fill_(exit_layers[index]))
        if not leaving.any():
            continue
        if running is None:
            running = torch.arange(batch_size, device=device)
            logits_out = logits.new_zeros(batch_size, logits.shape[1])
        logits_out[running[leaving]] = logits[leaving]
        exit_layer[running[leaving]] = exit_layers[index]
        staying = ~leaving
        running, hidden = running[staying], hidden[staying]
        state = {name: value[staying] for name, value in state.items()}
        if running.numel() == 0:
            return ExitDecisions(logits_out, exit_layer)
    _, final = segments[-1](hidden)
    if logits_out is None:
        return ExitDecisions(final, exit_layer)
    logits_out[running] = final
    return ExitDecisions(logits_out, exit_layer)


def decide_from_logits(settings: ExitSettings, exit_logits: Sequence[torch.Tensor], final_logits: torch.Tensor,
                       exit_layers: Sequence[int], num_blocks: int) -> ExitDecisions:
    """Apply an exit setting to logits already computed at every exit (no model run).

    Gives the same decisions as `run_early_exit` on the same inputs; threshold sweeps use it.

    Args:
        exit_logits: one (B, K) tensor per exit, in position order.
        final_logits: (B, K) logits of the final classifier.
        exit_layers: 1-based layer of each exit.
        num_blocks: the exit layer reported when no exit fires.
    """
    criterion = get_criterion(settings.strategy)
    batch_size, device = final_logits.shape[0], final_logits.device
    logits_out = final_logits.clone()
    exit_layer = torch.full((batch_size,), num_blocks, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    state = criterion.initial_state(batch_size, device)
    for index, (logits, layer) in enumerate(zip(exit_logits, exit_layers)):
        leaving, state = criterion.step(logits, settings.thresholds[index], settings.patience, state)
        leaving = leaving & ~done
        # `where`, not boolean indexing: the host never waits for the device to count the rows that leave.
        logits_out = torch.where(leaving[:, None], logits.to(logits_out.dtype), logits_out)
        exit_layer = torch.where(leaving, layer, exit_layer)
        done |= leaving
    return ExitDecisions(logits_out, exit_layer)

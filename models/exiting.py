"""Exit criteria and the batched early-exit runner.

Nothing here knows which backbone it drives. A backbone is anything with the `ExitingBackbone` methods: embed the
images, run block i, and give the final prediction. Decisions are per sample: each criterion keeps one state row
per sample, rows that exit are removed from the batch, and the remaining rows run on. A batch of N therefore
gives the exit layers and logits of N runs at batch size 1 while samples that left stop costing compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .exit_settings import ExitSettings

State = dict[str, torch.Tensor]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Natural-log entropy of softmax(logits) per row, computed as log(sum e^x) - sum(x e^x) / sum(e^x).

    This is the original code's formula (from DeeBERT); it is kept so that decisions near a threshold agree.
    """
    exp = torch.exp(logits)
    total = exp.sum(dim=1)
    return torch.log(total) - (logits * exp).sum(dim=1) / total


class ExitCriterion:
    """Per-sample exit rule. `step` is called at every exit, in order, with only the rows still running.

    Args:
        settings: strategy name, one threshold per exit, patience.
    """

    def __init__(self, settings: ExitSettings):
        self.settings = settings

    def initial_state(self, batch_size: int, device: torch.device) -> State:
        return {
            "count": torch.zeros(batch_size, dtype=torch.long, device=device),
            "previous": torch.full((batch_size,), -1, dtype=torch.long, device=device),
        }

    def step(self, exit_index: int, logits: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Decide which rows leave at exit `exit_index`. Returns (exit mask (B,), new state)."""
        strategy = self.settings.strategy
        threshold = self.settings.thresholds[exit_index]
        if strategy == "entropy":
            return entropy(logits) < threshold, state
        if strategy == "confidence":
            return torch.softmax(logits, dim=1).max(dim=1).values > threshold, state
        if strategy == "patience":
            prediction = logits.argmax(dim=1)
            # The first exit starts the count at 1; each following exit that agrees with the one before adds 1.
            count = torch.where(prediction == state["previous"], state["count"] + 1, torch.ones_like(state["count"]))
            return count == self.settings.patience, {"count": count, "previous": prediction}
        # patient_and_confident: count consecutive exits whose entropy is below their threshold.
        confident = entropy(logits) < threshold
        count = torch.where(confident, state["count"] + 1, torch.zeros_like(state["count"]))
        return count == self.settings.patience, {"count": count, "previous": state["previous"]}


class ExitingBackbone(Protocol):
    """What the runner needs from a backbone with exits (see the DeiT and Swin model classes)."""

    exits: nn.ModuleList

    def exit_after_layer(self) -> dict[int, int]:
        """0-based block index -> index of the exit that reads that block's output."""

    def num_layers(self) -> int: ...

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


def run_early_exit(backbone: ExitingBackbone, pixel_values: torch.Tensor, criterion: ExitCriterion) -> ExitDecisions:
    """Run the backbone, stopping each sample at the first exit whose criterion fires.

    Rows that exit are dropped from the running batch (its size only shrinks); the final classifier answers for the
    rows that reach the end, with exit layer = number of blocks.
    """
    hidden = backbone.embed(pixel_values)
    batch_size, num_layers = hidden.shape[0], backbone.num_layers()
    running = torch.arange(batch_size, device=hidden.device)
    state = criterion.initial_state(batch_size, hidden.device)
    logits_out: torch.Tensor | None = None
    exit_layer = torch.full((batch_size,), num_layers, dtype=torch.long, device=hidden.device)
    exit_after = backbone.exit_after_layer()
    for index in range(num_layers):
        tapped, hidden = backbone.run_layer(index, hidden)
        if index not in exit_after:
            continue
        logits, _ = backbone.exits[exit_after[index]](tapped)
        leaving, state = criterion.step(exit_after[index], logits, state)
        if logits_out is None:
            logits_out = logits.new_zeros(batch_size, logits.shape[1])
        if leaving.any():
            logits_out[running[leaving]] = logits[leaving]
            exit_layer[running[leaving]] = index + 1
            staying = ~leaving
            running, hidden = running[staying], hidden[staying]
            state = {name: value[staying] for name, value in state.items()}
            if running.numel() == 0:
                return ExitDecisions(logits_out, exit_layer)
    final = backbone.final_logits(hidden)
    if logits_out is None:
        return ExitDecisions(final, exit_layer)
    logits_out[running] = final
    return ExitDecisions(logits_out, exit_layer)


def decide_from_logits(criterion: ExitCriterion, exit_logits: list[torch.Tensor], final_logits: torch.Tensor,
                       exit_layers: list[int], num_layers: int) -> ExitDecisions:
    """Apply a criterion to logits already computed at every exit (no model run).

    Gives the same decisions as `run_early_exit` on the same inputs; threshold sweeps use it.

    Args:
        exit_logits: one (B, K) tensor per exit, in position order.
        final_logits: (B, K) logits of the final classifier.
        exit_layers: 1-based layer of each exit.
        num_layers: number of blocks (the exit layer reported when no exit fires).
    """
    batch_size = final_logits.shape[0]
    logits_out = final_logits.clone()
    exit_layer = torch.full((batch_size,), num_layers, dtype=torch.long, device=final_logits.device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=final_logits.device)
    state = criterion.initial_state(batch_size, final_logits.device)
    for index, (logits, layer) in enumerate(zip(exit_logits, exit_layers)):
        leaving, state = criterion.step(index, logits, state)
        leaving = leaving & ~done
        logits_out[leaving] = logits[leaving]
        exit_layer[leaving] = layer
        done |= leaving
    return ExitDecisions(logits_out, exit_layer)

"""Each exit's loss terms and the training throughput over a logging window, averaged the way the Trainer averages
its `loss`.

`ExitTrainer.compute_loss` adds the detached terms of every training micro-batch (`models.loss_terms`); at each
logging step `ExitTrainer.log` adds `LossWindow.logs` to the Trainer's logs and a new window starts. For each term
`<name>` (`exit_4`, `exit_4_kd`, `exit_12`, ...):

- `loss_weight_<name>`: the term's weight in the loss, averaged over the optimiser steps of the window (0 on the
  steps that leave it out);
- `loss_<name>`: the term's value over the window, each micro-batch weighted by the term's weight in it, so that
  the sum over the terms of `loss_weight_<name> * loss_<name>` is the logged `loss`. A term's weight only changes
  under the alternating strategies (even steps weigh the exits 0 and the final classifier 1); a term that weighs 0
  throughout the window is the plain mean of its values.

Like the Trainer's `loss`, a step is the mean of its gradient-accumulation micro-batches and the sums are averaged
over processes (one all-reduce per logging step; every process has the same terms with the same weights, since they
come from the configuration and the step count). `images_per_second` counts the training images of every process
over the window's wall-clock time, evaluation and checkpoint saving left out. `data_wait_share` is the share of that
time the training loop spent waiting for its next batches from the loader, averaged over the processes: near 0 when
the input pipeline keeps up, large when the accelerator is starved (more loader workers, or faster decoding, would
help). The loop never waits for the device between logging steps, so this time is the wait for data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from models.loss_terms import LossTerm

# The key under which one set of terms is summed: (name, weight) of every term, in order.
TermsKey = tuple[tuple[str, float], ...]


@dataclass
class _TermSums:
    """Sums over the micro-batches that had one set of terms, each micro-batch counted 1 / its step's micro-batches."""

    weights: torch.Tensor  # the weight of every term (on the values' device)
    weighted: torch.Tensor  # sum of weight * value, per term
    plain: torch.Tensor  # sum of value, per term
    steps: float = 0.0  # sum of 1 / micro-batches per step


@dataclass
class _TermTotals:
    """One term's sums over the whole window, whatever its weight was."""

    weighted: float = 0.0
    plain: float = 0.0
    weight: float = 0.0
    steps: float = 0.0


class LossWindow(TrainerCallback):
    """The loss terms and image count of the current logging window (a `TrainerCallback` only to stop its clock
    during evaluation and saving)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.sums: dict[TermsKey, _TermSums] = {}
        self.images = 0
        self.data_wait = 0.0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.clock = time.perf_counter()

    def add(self, terms: Mapping[str, LossTerm], images: int, micro_batches: int) -> None:
        """Add one micro-batch: its detached `terms`, its `images`, and the micro-batches of its optimiser step."""
        key = tuple((name, term.weight) for name, term in terms.items())
        values = torch.stack([term.value for term in terms.values()]).float()
        if key not in self.sums:  # the weights go to the device once per set of terms, not at every step
            weights = torch.tensor([weight for _, weight in key]).to(values.device)
            self.sums[key] = _TermSums(weights, torch.zeros_like(values), torch.zeros_like(values))
        sums, share = self.sums[key], 1.0 / micro_batches
        sums.weighted += values * sums.weights * share
        sums.plain += values * share
        sums.steps += share
        self.images += images

    def add_data_wait(self, seconds: float) -> None:
        """Add time the training loop spent waiting for batches."""
        self.data_wait += seconds

    def logs(self, sum_over_processes: Callable[[torch.Tensor], torch.Tensor], processes: int) -> dict[str, float]:
        """The window's values (see the module docstring), then a new window; empty when nothing was added.

        Args:
            sum_over_processes: sums a tensor over the processes (e.g. accelerate's `reduce(..., "sum")`); every
                process must call `logs` at the same step.
            processes: how many processes train.
        """
        if not self.sums:
            return {}
        elapsed = time.perf_counter() - self.clock
        sums = list(self.sums.values())
        local = torch.cat([part for entry in sums for part in (entry.weighted, entry.plain)]
                          + [sums[0].plain.new_tensor([self.data_wait, self.images])])
        summed = (sum_over_processes(local).double().cpu() / processes).tolist()
        totals: dict[str, _TermTotals] = {}
        offset = 0
        for key, entry in self.sums.items():
            for index, (name, weight) in enumerate(key):
                total = totals.setdefault(name, _TermTotals())
                total.weighted += summed[offset + index]
                total.plain += summed[offset + len(key) + index]
                total.weight += weight * entry.steps
                total.steps += entry.steps
            offset += 2 * len(key)
        steps = sum(entry.steps for entry in sums)
        logs = {f"loss_{name}": total.weighted / total.weight if total.weight else total.plain / total.steps
                for name, total in totals.items()}
        logs.update({f"loss_weight_{name}": total.weight / steps for name, total in totals.items()})
        logs["images_per_second"] = summed[-1] * processes / elapsed
        logs["data_wait_share"] = min(1.0, summed[-2] / elapsed)
        self.reset()
        return logs

    def on_train_begin(self, args, state, control, **kwargs):
        self.restart_clock()

    def on_evaluate(self, args, state, control, **kwargs):
        self.restart_clock()

    def on_save(self, args, state, control, **kwargs):
        self.restart_clock()

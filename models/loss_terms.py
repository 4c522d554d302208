"""A training loss as named, weighted terms: the total the optimiser sees, and each classifier's part of it.

Every loss of `models.losses` adds its terms (a scalar and its weight) and takes the total from exactly those terms,
so the parts a run logs (`utils.training.loss_window`) add up to the loss it logs. Names follow the classifier a term
trains: `exit_{layer}` for its cross-entropy with the labels, `exit_{layer}_kd` for prediction distillation from the
final classifier, `exit_{layer}_hete` / `exit_{layer}_homo` for the heterogeneous / homogeneous feature distillation
of LGViT's stage 2 (`classifier_names` gives the names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

FINAL = "final"


class LossTerm(NamedTuple):
    """One term of a training loss: a scalar and its weight in the total."""

    value: torch.Tensor
    weight: float


def classifier_names(exit_layers: Sequence[int], num_blocks: int) -> list[str]:
    """The name of every exit head in position order, then the final classifier's.

    A head is `exit_{layer}` by the 1-based backbone layer it reads; the final classifier is `exit_{num_blocks}`
    (the layer its samples leave at), or `final` when a head already reads the last layer.
    """
    names = [f"exit_{layer}" for layer in exit_layers]
    final = f"exit_{num_blocks}"
    return [*names, FINAL if final in names else final]


class LossTerms:
    """The named terms of one training loss, in the order they were added."""

    def __init__(self) -> None:
        self.terms: dict[str, LossTerm] = {}

    def add(self, name: str, value: torch.Tensor, weight: float) -> None:
        """Add the scalar `value` with `weight` (a term's name must be new)."""
        if name in self.terms:
            raise ValueError(f"The loss already has a term {name!r}.")
        self.terms[name] = LossTerm(value, float(weight))

    def total(self) -> torch.Tensor:
        """The loss: the weighted sum of the terms."""
        return torch.stack([term.value * term.weight for term in self.terms.values()]).sum()

    def detached(self) -> dict[str, LossTerm]:
        """The terms without their graphs, for logging."""
        return {name: LossTerm(term.value.detach(), term.weight) for name, term in self.terms.items()}

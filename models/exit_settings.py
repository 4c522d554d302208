"""Checked values of the early-exit configuration fields, with errors that name the field and the allowed values.

The configurations store the original LGViT field names; this module turns them into checked values once:
`ExitSettings` (criterion, one threshold per exit, patience) and the training strategy names. The exit criteria
themselves live in `models.criteria`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .criteria import get_criterion

STAGE1_STRATEGIES = ("normal", "weighted", "alternating", "alternating_weighted", "distillation")
STAGE2_STRATEGIES = ("distillation", "distillation_LGViT")
TRAIN_STRATEGIES = STAGE1_STRATEGIES + ("distillation_LGViT",)


def check_choice(field: str, value: object, allowed: Sequence[str]) -> None:
    """Raise a ValueError naming `field` when `value` is not one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"`{field}`={value!r} is not supported; allowed values: {', '.join(map(str, allowed))}.")


def parse_list_string(field: str, value: object) -> object:
    """Turn the original code's string form of a list (e.g. "[4,5,6]") into a Python list; pass others through."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"`{field}`={value!r} is not a list such as [4, 5, 6]: {error}.") from None


def check_positions(field: str, positions: Sequence[int], num_blocks: int, num_exits: int) -> list[int]:
    """Check 1-based exit layers: integers in 1..num_blocks, increasing, one per exit."""
    if not isinstance(positions, (list, tuple)) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in positions
    ):
        raise ValueError(f"`{field}`={positions!r} must be a list of 1-based layer numbers, e.g. [4, 5, 6].")
    if len(positions) != num_exits:
        raise ValueError(
            f"`{field}` lists {len(positions)} layers but `num_early_exits`={num_exits}; give one layer per exit."
        )
    if len(set(positions)) != len(positions):
        raise ValueError(f"`{field}`={list(positions)} repeats a layer; each exit needs its own layer.")
    if list(positions) != sorted(positions):
        raise ValueError(f"`{field}`={list(positions)} must be in increasing order.")
    if positions and (positions[0] < 1 or positions[-1] > num_blocks):
        raise ValueError(f"`{field}`={list(positions)} must hold layers between 1 and {num_blocks}.")
    return list(positions)


@dataclass(frozen=True)
class ExitSettings:
    """The checked exit rule of a model: criterion name, one threshold per exit and the patience count."""

    strategy: str
    thresholds: tuple[float, ...]
    patience: int


def resolve_exit_settings(
    strategy: str,
    threshold: float | Sequence[float] | None,
    patience: int | None,
    num_exits: int,
    default_thresholds: Mapping[str, float] | None = None,
    default_patience: Mapping[str, int] | None = None,
) -> ExitSettings:
    """Check the exit fields of a configuration and fill in the defaults.

    Args:
        strategy: a registered criterion (`models.criteria`).
        threshold: a float for every exit, one value per exit, or None for the default; checked against the
            criterion's range (criteria without a threshold ignore it).
        patience: consecutive exits the counting criteria need (>= 1).
        num_exits: number of exit heads.
        default_thresholds / default_patience: a backbone's own defaults by criterion name (the original code's
            values differ between DeiT and Swin); the criterion's defaults otherwise.
    """
    criterion = get_criterion(strategy)
    if threshold is None:
        default = (default_thresholds or {}).get(strategy, criterion.default_threshold)
        values = [float(default)] * num_exits
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        values = [float(threshold)] * num_exits
    elif isinstance(threshold, (list, tuple)):
        if len(threshold) != num_exits:
            raise ValueError(
                f"`threshold` has {len(threshold)} values but the model has {num_exits} exits; give one float for "
                "every exit or one value per exit."
            )
        values = [float(value) for value in threshold]
    else:
        raise ValueError(f"`threshold`={threshold!r} must be a float, a list with one float per exit, or None.")
    if criterion.uses_threshold:
        criterion.check_thresholds(values)
    if patience is None:
        patience = (default_patience or {}).get(strategy, criterion.default_patience)
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        raise ValueError(f"`patience`={patience!r} must be a whole number >= 1.")
    return ExitSettings(strategy=strategy, thresholds=tuple(values), patience=patience)


def check_training_fields(train_strategy: str, loss_coefficient: float, homo: float, hete: float) -> None:
    """Check the training strategy name and the loss weights."""
    check_choice("train_strategy", train_strategy, TRAIN_STRATEGIES)
    if not 0.0 <= loss_coefficient <= 1.0:
        raise ValueError(f"`loss_coefficient`={loss_coefficient} must lie between 0 and 1 (the distillation weight).")
    for name, value in (("homo_coefficient", homo), ("hete_coefficient", hete)):
        if value < 0.0:
            raise ValueError(f"`{name}`={value} must be >= 0.")

"""Accuracy/speed-up curves and comparison rows as wandb tables, each curve with a line plot, beside the PNG figures.

- `log_tradeoff_curves`: `<prefix>/sweep`, a table of every setting of every curve, and `<prefix>/tradeoff_curve`,
  a line plot of accuracy against FLOPs speed-up with one line per curve (a criterion of one model, or a method),
  drawn over each curve's Pareto front as `plot_tradeoff` draws it; wandb stores the plotted rows as
  `<prefix>/tradeoff_curve_table`.
- `log_rows`: any list of flat dicts as one table (the method comparison).
Both log to the active wandb run and return False when there is none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .sweep import SweepPoint, pareto_front

CURVE_COLUMNS = ("threshold", "patience", "accuracy", "average_exit_layer", "layer_speedup", "flops_speedup")


def _active_run() -> Any:
    try:
        import wandb
    except ImportError:
        return None
    return wandb.run


def curve_rows(curves: Mapping[str, Sequence[SweepPoint]], label_column: str = "criterion",
               front_only: bool = False) -> list[dict[str, Any]]:
    """One row per setting: the curve's label, the setting (its shared threshold, patience) and what it achieves;
    with `front_only`, each curve's Pareto front in FLOPs speed-up, by increasing speed-up."""
    rows = []
    for label, points in curves.items():
        for point in pareto_front(points) if front_only else points:
            values = point.as_dict()
            values["threshold"] = point.thresholds[0] if point.thresholds else None  # sweeps share one threshold
            rows.append({label_column: label, **{column: values[column] for column in CURVE_COLUMNS}})
    return rows


def _cell(value: Any) -> Any:
    """A table cell: numbers, text, booleans and None as they are, anything else (a per-exit list) as JSON text."""
    return value if value is None or isinstance(value, (int, float, str, bool)) else json.dumps(value)


def _table(rows: list[dict[str, Any]]) -> Any:
    import wandb

    columns = list(rows[0]) if rows else []
    return wandb.Table(columns=columns, data=[[_cell(row[column]) for column in columns] for row in rows])


def log_tradeoff_curves(curves: Mapping[str, Sequence[SweepPoint]], prefix: str = "analysis",
                        label_column: str = "criterion", title: str = "Accuracy vs FLOPs speed-up") -> bool:
    """Log the curves as tables with a line plot (see the module docstring); False when no wandb run is active."""
    if _active_run() is None:
        return False
    import wandb

    plot = wandb.plot.line(_table(curve_rows(curves, label_column, front_only=True)), "flops_speedup", "accuracy",
                           stroke=label_column, title=title)
    wandb.log({f"{prefix}/sweep": _table(curve_rows(curves, label_column)), f"{prefix}/tradeoff_curve": plot})
    return True


def log_rows(rows: list[dict[str, Any]], key: str) -> bool:
    """Log `rows` (flat dicts with the same keys) as the table `key`; False when no wandb run is active."""
    if _active_run() is None:
        return False
    import wandb

    wandb.log({key: _table(rows)})
    return True

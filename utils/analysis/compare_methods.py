"""Compare early-exit methods trained and evaluated by `scripts/compare_methods.sh`: one markdown table and one
figure holding every method's accuracy/speed-up curve.

Reads, for each method, `<output dir>/<method>/eval/analysis_results.json` (the calibrated operating point, measured
speed-up included) and `sweep.json` (the method's curve under its own exit criterion), and the base model's
`<output dir>/base/eval_results.json` (its accuracy, and the kernel set and library versions the runs recorded).
Writes `comparison.md`, `comparison.json` and `comparison.png` in the output directory and prints the table. With
`--report_to wandb` it also logs the table and every method's curve (a table with a line plot,
`utils.analysis.wandb_tables`) to a wandb run of job type `compare` (project `WANDB_PROJECT`, else `LGViT_methods`;
offline without an API key).

Usage (from the repository root):
python -m utils.analysis.compare_methods <output dir> <method> [<method> ...] [--report_to wandb]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from models.criteria import get_criterion
from utils.analysis.plots import plot_tradeoff
from utils.analysis.sweep import load_sweep
from utils.analysis.wandb_tables import log_rows, log_tradeoff_curves
from utils.training.logging_setup import configure_wandb
from utils.training.wandb_run import code_version, init_run

# The figure shows the settings at most this many accuracy points below the base model (the useful range).
ZOOM_POINTS = 10


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: did that method's evaluation run (with --sweep True)?")
    return json.loads(path.read_text())


def method_row(name: str, analysis: dict[str, Any]) -> dict[str, Any]:
    """One table row from a method's analysis_results.json."""
    return {
        "method": name,
        "criterion": analysis["strategy"],
        "threshold": analysis["threshold"],
        "patience": analysis["patience"],
        "exits": len(analysis["flops"]["exit_layers"]),
        "head_parameters": analysis["flops"]["head_parameters"],
        "accuracy": analysis["accuracy"],
        "final_accuracy": analysis["final_accuracy"],
        "average_exit_layer": analysis["average_exit_layer"],
        "layer_speedup": analysis["layer_speedup"],
        "flops_speedup": analysis["flops_speedup"],
        "measured_speedup": analysis.get("measured_speedup"),
        "measured_speedup_range": analysis.get("measured_speedup_range"),
        "measured_speedup_valid": analysis.get("measured_speedup_valid"),
        "timed_layer_speedup": analysis.get("timed_layer_speedup"),
        "timed_images": analysis.get("timed_images"),
        "timed_rounds": analysis.get("timed_rounds"),
        "target": analysis.get("target"),
        **budget_fields(analysis),
    }


def budget_fields(analysis: dict[str, Any]) -> dict[str, Any]:
    """The accuracy budget of a method's calibration and how the evaluation split kept it (None without one)."""
    return {
        "accuracy_drop": 100.0 * (analysis["final_accuracy"] - analysis["accuracy"]),
        "max_accuracy_drop": analysis.get("max_accuracy_drop"),
        "accuracy_drop_within_budget": analysis.get("accuracy_drop_within_budget"),
        "certified": analysis.get("certified", False),
        "risk_level": analysis.get("risk_level"),
        "certified_risk_bound": analysis.get("certified_risk_bound"),
        "critical_errors": analysis.get("critical_errors"),
        "calibration_samples": analysis.get("calibration_samples"),
        "calibration_flops_speedup": analysis.get("calibration_flops_speedup"),
        "evaluation_risk_name": analysis.get("evaluation_risk_name"),
        "evaluation_risk": analysis.get("evaluation_risk"),
        "evaluation_risk_lower_bound": analysis.get("evaluation_risk_lower_bound"),
    }


def markdown_table(rows: list[dict[str, Any]], base_accuracy: float) -> str:
    """The comparison as a markdown table (accuracies in %)."""
    lines = [
        "| method | exits (head params) | exit rule | accuracy (%) | own final head (%) | avg exit layer "
        "| speed-up: layers | FLOPs | measured (range) | drop, points (budget) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| base model (no exits) | 0 | - | {100 * base_accuracy:.2f} | - | - | 1.00 | 1.00 | 1.00 | - |",
    ]
    for row in rows:
        measured = measured_cell(row)
        lines.append(
            f"| {row['method']} | {row['exits']} ({row['head_parameters'] / 1e3:.0f}k) | {exit_rule(row)} "
            f"| {100 * row['accuracy']:.2f} | {100 * row['final_accuracy']:.2f} | {row['average_exit_layer']:.2f} "
            f"| {row['layer_speedup']:.2f} | {row['flops_speedup']:.2f} | {measured} | {drop_cell(row)} |"
        )
    return "\n".join(lines)


def drop_cell(row: dict[str, Any]) -> str:
    """The accuracy drop against the method's own final head on the evaluation split, with its budget and whether
    it was kept, e.g. "0.74 (<= 1, kept)"."""
    if row["max_accuracy_drop"] is None:
        return f"{row['accuracy_drop']:.2f}"
    kept = "within" if row["accuracy_drop_within_budget"] else "above"
    return f"{row['accuracy_drop']:.2f} ({kept} {row['max_accuracy_drop']:g})"


def budget_table(certified: list[dict[str, Any]], empirical: list[dict[str, Any]]) -> str:
    """Empirical against certified thresholds for the same budget, method by method (drops in points)."""
    first = certified[0]
    lines = [
        "| method | budget | empirical: drop | risk (95% low) | FLOPs speed-up "
        f"| certified (delta = {first['risk_level']:g}, n = {first['calibration_samples']}): risk bound | drop "
        "| risk (95% low) | FLOPs speed-up (expected) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for safe, plain in zip(certified, empirical):
        lines.append(
            f"| {safe['method']} | {safe['max_accuracy_drop']:g} | {drop_cell(plain)} | {risk_cell(plain)} "
            f"| {plain['flops_speedup']:.2f} | {safe['certified_risk_bound']:.2f} | {drop_cell(safe)} "
            f"| {risk_cell(safe)} "
            f"| {safe['flops_speedup']:.2f} ({safe['calibration_flops_speedup']:.2f}) |"
        )
    return "\n".join(lines)


def budget_note(certified: list[dict[str, Any]], empirical: list[dict[str, Any]]) -> str:
    """What the budget table's columns mean, naming the risk of the certified and of the empirical rows."""
    def names(rows: list[dict[str, Any]]) -> str:
        return "; ".join(sorted({str(row["evaluation_risk_name"]) for row in rows}))

    return (" Budget table (points): drop = final head accuracy - early-exit accuracy on the evaluation split; "
            f"risk = on the evaluation split, the {names(certified)} that was certified (empirical rows: the "
            f"{names(empirical)}), with its "
            "one-sided 95% lower confidence bound (above the budget only when the split shows the promise broken "
            "beyond chance). Certified: with probability >= 1 - delta over the calibration draw, the risk on new "
            "images from the same distribution is at most the risk bound (the upper confidence bound at the most "
            "errors that certify, at most the budget; it holds for the chosen setting, unlike a bound at that "
            "setting's own error count); its FLOPs speed-up is an estimate, not certified.")


def risk_cell(row: dict[str, Any]) -> str:
    """The risk on the evaluation split with its one-sided 95% lower confidence bound, e.g. "1.48 (0.51)"."""
    return f"{row['evaluation_risk']:.2f} ({row['evaluation_risk_lower_bound']:.2f})"


def measured_cell(row: dict[str, Any]) -> str:
    """The measured speed-up with the range of its rounds, "broken" when it exceeds the layer speed-up of the images
    timed, "-" when not measured."""
    if row["measured_speedup"] is None:
        return "-"
    if not row["measured_speedup_valid"]:
        return f"broken ({row['measured_speedup']:.2f} > layers {row['timed_layer_speedup']:.2f} of the timed images)"
    low, high = row["measured_speedup_range"]
    return f"{row['measured_speedup']:.2f} ({low:.2f}-{high:.2f})"


def exit_rule(row: dict[str, Any]) -> str:
    """The criterion and its setting in words, e.g. "confidence > 0.8" or "2 exits in a row with entropy < 0.5"."""
    return get_criterion(row["criterion"]).describe(row["threshold"], row["patience"])


def compare(output_dir: str | Path, methods: list[str], to_wandb: bool = False) -> dict[str, Any]:
    """Write comparison.md, comparison.json and comparison.png (and with `to_wandb` log the table and the curves to
    the active wandb run); returns the rows and the base accuracy."""
    output_dir = Path(output_dir)
    base = read_json(output_dir / "base" / "eval_results.json")
    base_accuracy = base["eval_accuracy"]
    rows, curves = [], {}
    for method in methods:
        analysis = read_json(output_dir / method / "eval" / "analysis_results.json")
        rows.append(method_row(method, analysis))
        curves[f"{method} ({analysis['strategy']})"] = load_sweep(output_dir / method / "eval" / "sweep.json")[
            analysis["strategy"]]
    table = markdown_table(rows, base_accuracy)
    target = next((row["target"] for row in rows if row["target"]), None)
    chosen = f"calibrated on held-out training samples for {target}" if target else "as configured"
    note = f"Thresholds {chosen}; accuracy and speed-ups on the evaluation split."
    timed = next((row for row in rows if row["timed_rounds"]), None)
    if timed:
        note += (f" Measured: the median over {timed['timed_rounds']} rounds of full-model time / early-exit time on "
                 f"{timed['timed_images']} evaluation images, with the smallest and largest round in brackets; a "
                 "measurement above the layer speed-up is marked broken.")
    # The kernel set and library versions of the runs (None from runs that did not record them).
    summary = {"base_accuracy": base_accuracy, "environment": base.get("environment"), "methods": rows}
    if rows and rows[0]["certified"]:  # scripts/compare_methods.sh with RISK_LEVEL also ran the empirical rule
        summary["empirical"] = [method_row(method, read_json(output_dir / method / "eval_empirical" /
                                                             "analysis_results.json")) for method in methods]
        table += "\n\n" + budget_table(rows, summary["empirical"])
        note += budget_note(rows, summary["empirical"])
    (output_dir / "comparison.md").write_text(f"{table}\n\n{note}\n")
    (output_dir / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_tradeoff(curves, output_dir / "comparison.png", reference_accuracy=base_accuracy,
                  reference_label="base model (no exits)", accuracy_floor=base_accuracy - ZOOM_POINTS / 100,
                  title=f"Accuracy vs FLOPs speed-up, every method (settings within {ZOOM_POINTS} points)")
    if to_wandb:
        log_rows([{"base_accuracy": base_accuracy, **row} for row in rows], "comparison/table")
        log_tradeoff_curves(curves, prefix="comparison", label_column="method",
                            title="Accuracy vs FLOPs speed-up, every method")
    print(f"\n{table}\n\n{note}\nWritten to {output_dir / 'comparison.md'} and {output_dir / 'comparison.png'}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.analysis.compare_methods",
                                     description="Compare the early-exit methods of scripts/compare_methods.sh.")
    parser.add_argument("output_dir", help="the directory holding base/ and one directory per method")
    parser.add_argument("methods", nargs="+", help="the methods' directory names, e.g. SDN PABEE LGViT")
    parser.add_argument("--report_to", choices=("none", "wandb", "tensorboard", "all"), default="none",
                        help="wandb or all: also log the table and the curves to a wandb run (offline without an API "
                             "key); the launchers' REPORT_TO values are accepted, tensorboard logs nothing here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.report_to not in ("wandb", "all"):
        return compare(args.output_dir, args.methods)
    configure_wandb(["wandb"])
    import wandb

    init_run(project=os.environ.get("WANDB_PROJECT") or "LGViT_methods", job_type="compare", group="comparison",
             name=f"comparison_{Path(args.output_dir).resolve().name}", tags=["comparison", *args.methods],
             config={"output_dir": str(args.output_dir), "methods": args.methods, "code_version": code_version()})
    try:
        return compare(args.output_dir, args.methods, to_wandb=True)
    finally:
        wandb.finish()


if __name__ == "__main__":
    main()

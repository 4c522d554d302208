"""Summarise the quickstart: read each stage's eval_results.json, print a table, write results.json.

Usage: python -m utils.analysis.quickstart_report <quickstart output dir> [<seconds taken>]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Stage directory -> row label. The early-exit rows use the threshold saved in that stage's config.
ROWS = {
    "base": "base model, full depth (no exits)",
    "stage1": "stage 1: LGViT heads, joint training",
    "full_depth": "stage 2 model, full depth (never exits)",
    "eval": "stage 2: LGViT after self-distillation",
}


def read(directory: Path, name: str) -> dict:
    return json.loads((directory / name).read_text())


def summarise(output_dir: Path, seconds: float | None = None) -> dict:
    """Collect the quickstart's numbers into the results.json layout."""
    metrics = {stage: read(output_dir / stage, "eval_results.json") for stage in ROWS}
    lgvit = metrics["eval"]
    config = read(output_dir / "stage2", "config.json")
    results = {
        "full_model_accuracy": metrics["base"]["eval_accuracy"],
        "lgvit_accuracy": lgvit["eval_accuracy"],
        "lgvit_average_exit_layer": lgvit["eval_average_exit_layer"],
        "lgvit_layer_speedup": lgvit["eval_speed-up"],
        "lgvit_flops_speedup": lgvit["eval_flops_speedup"],
        "lgvit_full_depth_accuracy": metrics["full_depth"]["eval_accuracy"],
        "stage1_accuracy": metrics["stage1"]["eval_accuracy"],
        "stage1_average_exit_layer": metrics["stage1"]["eval_average_exit_layer"],
        "stage1_layer_speedup": metrics["stage1"]["eval_speed-up"],
        "exit_strategy": config["exit_strategy"],
        "threshold": config["threshold"],
        "eval_samples": lgvit["eval_samples"],
        "lgvit_exit_counts": {str(n): lgvit[f"eval_counts_exit_layer_{n}"]
                              for n in range(1, config["num_hidden_layers"] + 1)},
        # The kernel set and library versions the evaluation ran with (None from runs that did not record them).
        "environment": lgvit.get("environment"),
    }
    if seconds is not None:
        results["quickstart_seconds"] = seconds
    return {"rows": metrics, "results": results}


def table(rows: dict) -> str:
    """One line per stage: accuracy, average exit layer, the paper's layer speed-up and the FLOPs speed-up (which
    pays for the exit heads that ran)."""
    lines = [f"{'model':<42} {'accuracy':>9} {'avg exit layer':>15} {'speed-up: layers':>17} {'FLOPs':>6}"]
    for stage, label in ROWS.items():
        m = rows[stage]
        lines.append(f"{label:<42} {m['eval_accuracy']:>9.4f} {m['eval_average_exit_layer']:>15.2f} "
                     f"{m['eval_speed-up']:>17.2f} {m['eval_flops_speedup']:>6.2f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this module."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="the quickstart's output directory")
    parser.add_argument("seconds", type=float, nargs="?", help="how long the quickstart took")
    return parser


def main(argv: list[str]) -> None:
    arguments = build_parser().parse_args(argv)
    output_dir = arguments.output_dir
    summary = summarise(output_dir, arguments.seconds)
    (output_dir / "results.json").write_text(json.dumps(summary["results"], indent=2) + "\n")
    results = summary["results"]
    print(f"\nQuickstart results ({results['eval_samples']} held-out digits, exit strategy "
          f"{results['exit_strategy']}, threshold {results['threshold']}):\n")
    print(table(summary["rows"]))
    print(f"\nExits per layer (LGViT): {results['lgvit_exit_counts']}")
    if results["environment"] is not None:
        environment = results["environment"]
        print(f"Kernel set {environment['cpu_capability']}, torch {environment['libraries']['torch']}, "
              f"transformers {environment['libraries']['transformers']}")
    print(f"Written to {output_dir / 'results.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""README command 1: scripts/quickstart.sh runs the whole recipe (EPOCHS=1 keeps it short) and reports it."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ROW_LABELS = {  # table row -> the stage directory whose eval_results.json it shows
    "base model, full depth (no exits)": "base",
    "stage 1: LGViT heads, joint training": "stage1",
    "stage 2 model, full depth (never exits)": "full_depth",
    "stage 2: LGViT after self-distillation": "eval",
}
RESULT_KEYS = {
    "full_model_accuracy", "lgvit_accuracy", "lgvit_average_exit_layer", "lgvit_layer_speedup", "lgvit_flops_speedup",
    "lgvit_full_depth_accuracy", "stage1_accuracy", "stage1_average_exit_layer", "stage1_layer_speedup",
    "exit_strategy",
    "threshold", "eval_samples", "lgvit_exit_counts", "quickstart_seconds", "environment",
}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("quickstart") / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "EPOCHS": "1", "OUTPUT_DIR": str(out),
           "REPORT_TO": "none", "PYTHON": sys.executable}
    finished = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return out, finished.stdout


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_training_stage_ran_the_epochs_asked_for(quickstart) -> None:
    out, _ = quickstart
    for stage in ("base", "stage1", "stage2"):
        assert read(out / stage / "train_results.json")["epoch"] == 1.0, stage
    assert read(out / "stage2" / "config.json")["train_strategy"] == "distillation_LGViT"
    for figure in ("tradeoff.png", "tradeoff_layers.png", "exit_accuracy.png", "exit_histogram.png"):
        assert (out / "eval" / figure).stat().st_size > 5000, figure


def test_results_json_holds_the_promised_numbers(quickstart) -> None:
    out, _ = quickstart
    results = read(out / "results.json")
    assert set(results) == RESULT_KEYS
    for key in ("full_model_accuracy", "lgvit_accuracy", "lgvit_full_depth_accuracy", "stage1_accuracy"):
        assert isinstance(results[key], float) and 0.0 <= results[key] <= 1.0, key
    assert results["exit_strategy"] == "confidence" and results["threshold"] == 0.8
    # The kernel set and libraries it computed with: the ones this process has (same environment variables).
    assert results["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert results["environment"]["libraries"]["torch"] == torch.__version__.split("+")[0]
    assert results["eval_samples"] == 270 and isinstance(results["quickstart_seconds"], float)
    counts = results["lgvit_exit_counts"]
    assert list(counts) == [str(n) for n in range(1, 13)] and all(isinstance(c, int) for c in counts.values())
    assert sum(counts.values()) == 270 and counts["1"] == counts["2"] == counts["3"] == 0  # first exit: layer 4
    average = sum(int(layer) * count for layer, count in counts.items()) / 270
    assert results["lgvit_average_exit_layer"] == pytest.approx(average)
    assert 4.0 <= average <= 12.0 and results["lgvit_layer_speedup"] == pytest.approx(12 / average)
    assert 1.0 <= results["stage1_average_exit_layer"] <= 12.0
    assert results["stage1_layer_speedup"] == pytest.approx(12 / results["stage1_average_exit_layer"])
    assert 0.0 < results["lgvit_flops_speedup"] <= results["lgvit_layer_speedup"]
    # Each number is its stage's evaluation.
    lgvit, stage1 = read(out / "eval" / "eval_results.json"), read(out / "stage1" / "eval_results.json")
    assert results["lgvit_accuracy"] == lgvit["eval_accuracy"] and results["stage1_accuracy"] == stage1["eval_accuracy"]
    assert results["full_model_accuracy"] == read(out / "base" / "eval_results.json")["eval_accuracy"]
    assert results["lgvit_full_depth_accuracy"] == read(out / "full_depth" / "eval_results.json")["eval_accuracy"]
    assert results["lgvit_flops_speedup"] == lgvit["eval_flops_speedup"]
    assert results["lgvit_layer_speedup"] == lgvit["eval_speed-up"]
    assert results["stage1_layer_speedup"] == stage1["eval_speed-up"]
    assert results["lgvit_average_exit_layer"] == lgvit["eval_average_exit_layer"]
    assert results["stage1_average_exit_layer"] == stage1["eval_average_exit_layer"]
    assert counts == {str(n): lgvit[f"eval_counts_exit_layer_{n}"] for n in range(1, 13)}


def test_printed_table_and_exits_per_layer(quickstart) -> None:
    out, printed = quickstart
    results = read(out / "results.json")
    assert "Quickstart results (270 held-out digits, exit strategy confidence, threshold 0.8):" in printed
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[header].split() == ["model", "accuracy", "avg", "exit", "layer", "speed-up:", "layers", "FLOPs"]
    for line, (label, stage) in zip(lines[header + 1:header + 5], ROW_LABELS.items()):
        assert line.startswith(label), line
        accuracy, average, layers, flops = (float(value) for value in line[len(label):].split())
        metrics = read(out / stage / "eval_results.json")
        assert accuracy == pytest.approx(metrics["eval_accuracy"], abs=5e-5)
        assert average == pytest.approx(metrics["eval_average_exit_layer"], abs=5e-3)
        assert layers == pytest.approx(metrics["eval_speed-up"], abs=5e-3)
        assert flops == pytest.approx(metrics["eval_flops_speedup"], abs=5e-3)
    full_depth = lines[header + 1 + list(ROW_LABELS.values()).index("full_depth")]
    assert re.search(r"\s12\.00\s+1\.00\s", full_depth)  # never exits: every sample runs all 12 layers
    (exits_line,) = [line for line in lines if line.startswith("Exits per layer (LGViT): ")]
    assert ast.literal_eval(exits_line.split(": ", 1)[1]) == results["lgvit_exit_counts"]


def test_the_readme_shows_the_printed_table_with_plausible_numbers(quickstart) -> None:
    """README.md's quickstart table keeps the shape the quickstart prints, and numbers a full run can give."""
    _, printed = quickstart
    block = (ROOT / "README.md").read_text().split("```\nQuickstart results", 1)[1].split("```", 1)[0]
    lines = [line for line in ("Quickstart results" + block).splitlines() if line.strip()]
    assert lines[0] in printed  # the same title line
    assert lines[1].split() == ["model", "accuracy", "avg", "exit", "layer", "speed-up:", "layers", "FLOPs"]
    for line, label in zip(lines[2:6], ROW_LABELS):
        assert line.startswith(label), line
        accuracy, average, layers, flops = (float(value) for value in line[len(label):].split())
        assert 0.8 <= accuracy <= 1.0 and 4.0 <= average <= 12.0 and layers == pytest.approx(12 / average, abs=6e-3)
        assert 0.0 < flops <= layers
    counts = ast.literal_eval(lines[6].split(": ", 1)[1])
    assert lines[6].startswith("Exits per layer (LGViT): ") and sum(counts.values()) == 270

"""The quickstart summary: table and results.json from the stages' eval_results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.analysis import quickstart_report


def write_stage(root: Path, stage: str, accuracy: float, exits: list[int], flops_speedup: float = 1.0) -> None:
    counts = {f"eval_counts_exit_layer_{n}": exits.count(n) for n in range(1, 13)}
    average = sum(exits) / len(exits)
    (root / stage).mkdir(parents=True)
    (root / stage / "eval_results.json").write_text(json.dumps({
        "eval_accuracy": accuracy, "eval_average_exit_layer": average, "eval_speed-up": 12 / average,
        "eval_flops_speedup": flops_speedup, "eval_samples": len(exits), **counts,
    }))


def test_summary_has_the_promised_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_stage(tmp_path, "base", 0.9, [12, 12])
    write_stage(tmp_path, "stage1", 0.92, [4, 12])
    write_stage(tmp_path, "stage2", 0.93, [4, 4])
    write_stage(tmp_path, "full_depth", 0.93, [12, 12])
    write_stage(tmp_path, "eval", 0.93, [4, 6], flops_speedup=2.2)
    (tmp_path / "stage2" / "config.json").write_text(json.dumps(
        {"exit_strategy": "confidence", "threshold": 0.8, "num_hidden_layers": 12}))
    quickstart_report.main([str(tmp_path), "123"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["full_model_accuracy"] == 0.9 and results["lgvit_accuracy"] == 0.93
    assert results["lgvit_average_exit_layer"] == 5.0 and results["lgvit_layer_speedup"] == pytest.approx(2.4)
    assert results["lgvit_flops_speedup"] == 2.2
    assert results["lgvit_exit_counts"]["4"] == 1 and results["quickstart_seconds"] == 123
    printed = capsys.readouterr().out
    assert "LGViT after self-distillation" in printed and "2.40   2.20" in printed

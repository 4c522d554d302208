"""The training benchmarks run in a reduced form, so that they cannot rot: the input pipeline comparison and the
training/evaluation throughput report (`benchmarks/bench_input_pipeline.py`, `benchmarks/bench_training.py`)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_input_pipeline, bench_training


def test_the_input_pipeline_benchmark_compares_both_ways_on_both_kinds() -> None:
    for kind in bench_input_pipeline.KINDS:
        result = bench_input_pipeline.measure(kind, rounds=2, workers=0, count=8)
        rates = result["images_per_second"]
        assert set(rates) == {"original (PIL, float)", "this project (TorchCodec, uint8)"}
        assert all(rate > 0 for rate in rates.values()) and result["ratio"] > 0
        assert result["ratio_range"][0] <= result["ratio"] <= result["ratio_range"][1]


def test_the_training_benchmark_reports_every_stage_precision_and_the_workers_needed(tmp_path: Path) -> None:
    report = bench_training.main(["--tiny", "--steps", "1", "--batch_size", "4", "--eval_batch_sizes", "4", "8",
                                  "--workers", "0", "--input_images", "4", "--json", str(tmp_path / "report.json")])
    assert json.loads((tmp_path / "report.json").read_text())["training"] == report["training"]
    assert set(report["training"]) == {"base", "stage1", "stage2"}
    assert all(set(rates) == {"fp32", "bf16"} and min(rates.values()) > 0 for rates in report["training"].values())
    assert set(report["evaluation"]) == {"precision", "4", "8"} and report["evaluation"]["8"] > 0
    assert all(count >= 1 for rates in report["workers_needed"].values() for count in rates.values())

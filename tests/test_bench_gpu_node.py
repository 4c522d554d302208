"""The first-run check of a GPU node (`benchmarks/bench_gpu_node.py`) on the tiny model: the three stages run
chained through the training entry point, and the table and the JSON report hold sane values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_gpu_node

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny command as a user runs it: its work directory and what it printed."""
    work = tmp_path_factory.mktemp("node")
    finished = subprocess.run([sys.executable, "-m", "benchmarks.bench_gpu_node", "--tiny",
                               "--work_dir", str(work / "run"), "--json", str(work / "report.json")],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return work, finished.stdout


def test_the_table_has_a_sane_row_per_stage(tiny_run: tuple[Path, str]) -> None:
    _, printed = tiny_run
    lines = printed.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("stage "))
    assert lines[header].split() == ["stage", "images/s", "per", "GPU", "data", "wait", "peak", "GPU", "mem", "of",
                                     "reference"]
    rows = [line.split() for line in lines[header + 1:]]
    assert [row[0] for row in rows] == ["base", "stage1", "stage2"]
    for row in rows:
        assert len(row) == 6 and float(row[1]) > 0 and 0.0 <= float(row[3].rstrip("%")) <= 100.0
        assert row[2] == row[4] == row[5] == "n/a"  # no GPU: no per-GPU rate, memory or reference
    assert "=== precision: fp32" in printed and "=== batch: global batch 32 = 1 process(es)" in printed


def test_the_json_report_and_the_chained_stages(tiny_run: tuple[Path, str]) -> None:
    work, _ = tiny_run
    report = json.loads((work / "report.json").read_text())
    assert report["device"] == "cpu" and report["processes"] == 0 and report["reference_images_per_second"] is None
    assert list(report["stages"]) == ["base", "stage1", "stage2"]
    for values in report["stages"].values():
        assert values["steps_timed"] == 2 and values["images_per_second"] > 0
        assert 0.0 <= values["data_wait_share"] <= 1.0 and values["peak_gpu_memory_gib"] is None
    configs = {stage: json.loads((work / "run" / stage / "config.json").read_text()) for stage in report["stages"]}
    assert configs["base"]["num_early_exits"] == 0 and configs["base"]["image_size"] == 16
    assert configs["stage1"]["highway_type"] == "LGViT" and configs["stage1"]["num_early_exits"] == 8
    assert configs["stage1"]["train_strategy"] == "alternating_weighted"
    assert configs["stage2"]["train_strategy"] == "distillation_LGViT" and configs["stage2"]["num_early_exits"] == 8
    for stage in report["stages"]:  # each stage logged every one of its steps
        history = json.loads((work / "run" / stage / "trainer_state.json").read_text())["log_history"]
        assert [entry["step"] for entry in history if "images_per_second" in entry] == [1, 2, 3]


def test_steady_state_weighs_each_step_by_its_time_and_leaves_out_the_first() -> None:
    history = [{"step": 1, "images_per_second": 1.0, "data_wait_share": 0.9},
               {"step": 2, "images_per_second": 100.0, "data_wait_share": 0.0},
               {"step": 3, "images_per_second": 50.0, "data_wait_share": 0.3},
               {"step": 3, "train_runtime": 9.0}]
    result = bench_gpu_node.steady_state(history, skip_steps=1)
    # 0.01 s + 0.02 s per image: 2 steps in 0.03 s per image; the wait is 0.3 of the slower step's 0.02 s.
    assert result["steps_timed"] == 2 and result["images_per_second"] == pytest.approx(2 / 0.03)
    assert result["data_wait_share"] == pytest.approx(0.3 * 0.02 / 0.03)
    assert bench_gpu_node.steady_state(history[1:2] + [{"step": 3, "images_per_second": 50.0}], 1)[
        "data_wait_share"] is None
    with pytest.raises(SystemExit, match="raise --steps"):
        bench_gpu_node.steady_state(history[:1], skip_steps=1)


def test_the_reference_follows_the_gpu_name() -> None:
    assert bench_gpu_node.reference_rate("NVIDIA H100 80GB HBM3", tiny=False, override=None) == 1460.0
    assert bench_gpu_node.reference_rate("NVIDIA A100-SXM4-80GB", tiny=False, override=None) == 900.0
    assert bench_gpu_node.reference_rate("Tesla V100-SXM2-32GB", tiny=False, override=None) is None
    assert bench_gpu_node.reference_rate("NVIDIA H100 80GB HBM3", tiny=True, override=None) is None
    assert bench_gpu_node.reference_rate("cpu", tiny=False, override=None) is None
    assert bench_gpu_node.reference_rate("Tesla V100-SXM2-32GB", tiny=False, override=700.0) == 700.0

"""scripts/compare_methods.sh end to end on a tiny setting: every method's runs, one table, one figure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pipeline_helpers import read_json
from test_pipeline_scripts import ROOT, run_script

from utils.compare_methods import METHOD_NAMES

TINY_RUN = ("--max_train_samples 64 --max_eval_samples 30 --max_steps 2 --per_device_eval_batch_size 16 "
            "--speed_samples 8 --speed_repeats 1 --disable_tqdm True")


@pytest.mark.parametrize("method", sorted(METHOD_NAMES))
def test_method_presets_name_their_layout_and_criterion(method: str) -> None:
    preset = yaml.safe_load((ROOT / "configs" / "methods" / f"{method}.yaml").read_text())
    assert {"highway_type", "num_early_exits", "position_exits", "train_strategy", "exit_strategy"} <= set(preset)
    assert len(preset["position_exits"]) == preset["num_early_exits"]


def test_compare_methods_writes_one_table_and_one_figure(tmp_path: Path) -> None:
    out = tmp_path / "compare"
    finished = run_script(f"bash {ROOT}/scripts/compare_methods.sh {TINY_RUN}", tmp_path, OUTPUT_DIR=str(out),
                          METHODS="pabee lgvit", MAX_ACCURACY_DROP="5")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (out / "lgvit" / "stage2" / "config.json").is_file()  # LGViT alone has a stage 2
    assert read_json(out / "lgvit" / "stage2" / "config.json")["train_strategy"] == "distillation_LGViT"

    summary = read_json(out / "comparison.json")
    assert [row["method"] for row in summary["methods"]] == ["PABEE", "LGViT"]
    assert summary["base_accuracy"] == read_json(out / "base" / "eval_results.json")["eval_accuracy"]
    for key, row in zip(("pabee", "lgvit"), summary["methods"]):
        analysis = read_json(out / key / "eval" / "analysis_results.json")
        assert row["criterion"] == yaml.safe_load((ROOT / "configs" / "methods" / f"{key}.yaml").read_text())[
            "exit_strategy"] == analysis["strategy"]
        assert row["accuracy"] == analysis["accuracy"] and row["measured_speedup"] == analysis["measured_speedup"]
        assert row["target"] == "accuracy drop <= 5.0 points"
        # The thresholds the evaluation used are the calibrated ones, saved with the model.
        assert read_json(out / key / "eval" / "config.json")["exit_strategy"] == analysis["strategy"]

    table = (out / "comparison.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 4  # header, base, PABEE, LGViT
    assert "| PABEE | 11 (" in table and "| LGViT | 8 (" in table and "exits in a row agree" in table
    assert (out / "comparison.png").stat().st_size > 5000
    assert "comparison.md" in finished.stdout


def test_an_unknown_method_stops_before_any_training(tmp_path: Path) -> None:
    finished = run_script(f"bash {ROOT}/scripts/compare_methods.sh", tmp_path, OUTPUT_DIR=str(tmp_path / "out"),
                          METHODS="sdn pabe")
    assert finished.returncode == 2 and "configs/methods/pabe.yaml" in finished.stderr
    assert not (tmp_path / "out" / "base").exists()

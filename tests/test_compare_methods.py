"""scripts/compare_methods.sh end to end on a tiny setting: every method's runs, one table, one figure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from pipeline_helpers import read_json
from test_pipeline_scripts import ROOT, run_script

TINY_RUN = ("--max_train_samples 64 --max_eval_samples 30 --max_steps 2 --per_device_eval_batch_size 16 "
            "--speed_samples 8 --speed_repeats 1 --disable_tqdm True")


PRESET_COLUMNS = ("highway_type", "position_exits", "train_strategy", "exit_strategy")
# A preset's file name is its method's name, e.g. configs/methods/ViT-EE.yaml.
METHODS = sorted(path.stem for path in (ROOT / "configs" / "methods").glob("*.yaml"))


def documented_method_table() -> dict[str, dict[str, object]]:
    """The method table of docs/analysis.md: method name -> its preset values as the table states them."""
    lines = (ROOT / "docs" / "analysis.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines)
                  if line.startswith("| method |") and all(f"`{column}`" in line for column in PRESET_COLUMNS))
    columns = [cell.strip().strip("`") for cell in lines[header].strip("|").split("|")]
    rows = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(columns, (cell.strip().strip("`") for cell in line.strip("|").split("|"))))
        layers = cells["position_exits"]
        if ".." in layers:
            first, last = (int(value) for value in layers.split(".."))
            cells["position_exits"] = list(range(first, last + 1))
        else:
            cells["position_exits"] = [int(value) for value in layers.split(",")]
        rows[cells["method"]] = cells
    return rows


def test_documented_method_table_states_every_preset() -> None:
    assert METHODS == ["BERxiT", "LGViT", "PABEE", "PCEE", "SDN", "ViT-EE"]
    assert set(documented_method_table()) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_method_presets_match_the_documented_table(method: str) -> None:
    preset = yaml.safe_load((ROOT / "configs" / "methods" / f"{method}.yaml").read_text())
    row = documented_method_table()[method]
    assert {column: preset[column] for column in PRESET_COLUMNS} == {column: row[column] for column in PRESET_COLUMNS}
    assert preset["num_early_exits"] == len(preset["position_exits"])


def test_compare_methods_writes_one_table_and_one_figure(tmp_path: Path) -> None:
    out = tmp_path / "compare"
    finished = run_script(f"bash {ROOT}/scripts/compare_methods.sh {TINY_RUN}", tmp_path, OUTPUT_DIR=str(out),
                          METHODS="pabee lgvit", MAX_ACCURACY_DROP="5", RISK_LEVEL="0.1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (out / "LGViT" / "stage2" / "config.json").is_file()  # LGViT alone has a stage 2
    assert read_json(out / "LGViT" / "stage2" / "config.json")["train_strategy"] == "distillation_LGViT"

    summary = read_json(out / "comparison.json")
    assert [row["method"] for row in summary["methods"]] == ["PABEE", "LGViT"]
    assert summary["base_accuracy"] == read_json(out / "base" / "eval_results.json")["eval_accuracy"]
    assert summary["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    for key, row in zip(("PABEE", "LGViT"), summary["methods"]):
        analysis = read_json(out / key / "eval" / "analysis_results.json")
        assert row["criterion"] == yaml.safe_load((ROOT / "configs" / "methods" / f"{key}.yaml").read_text())[
            "exit_strategy"] == analysis["strategy"]
        assert row["accuracy"] == analysis["accuracy"] and row["measured_speedup"] == analysis["measured_speedup"]
        assert row["target"] == "certified accuracy drop <= 5 points at risk level 0.1"
        assert analysis["certified"] and analysis["calibration_samples"] == 306  # the digits' default split, 0.2
        assert row["accuracy_drop_within_budget"] == analysis["accuracy_drop_within_budget"]
        # The thresholds the evaluation used are the calibrated ones, saved with the model.
        assert read_json(out / key / "eval" / "config.json")["exit_strategy"] == analysis["strategy"]
    # The empirical rule ran on the same budget, for the comparison.
    empirical = [read_json(out / key / "eval_empirical" / "analysis_results.json") for key in ("PABEE", "LGViT")]
    assert [row["target"] for row in empirical] == ["accuracy drop <= 5.0 points"] * 2
    assert [row["flops_speedup"] for row in summary["empirical"]] == [row["flops_speedup"] for row in empirical]

    table = (out / "comparison.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 4 + 3  # and the budget table's 3 rows
    assert "| PABEE | 5 | " in table and "(95% low)" in table and "certified (delta = 0.1, n = 306)" in table
    assert "| PABEE | 11 (" in table and "| LGViT | 8 (" in table and "exits in a row agree" in table
    assert (out / "comparison.png").stat().st_size > 5000
    assert "comparison.md" in finished.stdout


def test_an_unknown_method_stops_before_any_training(tmp_path: Path) -> None:
    finished = run_script(f"bash {ROOT}/scripts/compare_methods.sh", tmp_path, OUTPUT_DIR=str(tmp_path / "out"),
                          METHODS="sdn pabe")
    assert finished.returncode == 2 and "No preset for method 'pabe'" in finished.stderr
    assert not (tmp_path / "out" / "base").exists()


def test_a_split_too_small_to_certify_stops_before_any_training(tmp_path: Path) -> None:
    """77 calibration digits (CALIBRATION_SPLIT 0.05) cannot certify one point at risk level 0.1 (that needs 230):
    the script says so before the base model trains, with the fix."""
    finished = run_script(f"bash {ROOT}/scripts/compare_methods.sh {TINY_RUN}", tmp_path,
                          OUTPUT_DIR=str(tmp_path / "out"), METHODS="sdn lgvit", RISK_LEVEL="0.1",
                          CALIBRATION_SPLIT="0.05")
    assert finished.returncode != 0
    assert "The calibration split has 77 images, too few to certify" in finished.stderr + finished.stdout
    assert "--calibration_split" in finished.stderr + finished.stdout
    assert not (tmp_path / "out" / "base").exists() and not list((tmp_path / "out").rglob("*.safetensors"))

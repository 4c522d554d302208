"""Per-exit dashboards (docs/dashboards.md): what a short stage-1, stage-2 and evaluation run on the digits log, read
back from the Trainer state's log history, the TensorBoard event files and the offline wandb run directories.

- training: every loss term of every exit and its weight, whose weighted sum is the logged loss, and images/s;
- evaluation: each exit's own accuracy, equal to an offline pass over the same images, and the exit distribution as
  a histogram beside the per-layer scalars;
- wandb: group, tags and job type from the run's configuration, the argument files and code version in its config,
  the sweep's and the comparison's tables with their line plots.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from pipeline_helpers import NUM_LAYERS, full_depth_pass, read_json, run_args, write_tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb_records import offline_runs

import run_classification
from models import DeiTHighwayConfig, DeiTHighwayForImageClassification
from models.loss_terms import LossTerm, classifier_names
from models.losses import prediction_distillation
from utils.analysis import compare_methods, dashboard_figure
from utils.training.loss_window import LossWindow
from utils.training.wandb_run import METHODS_DIR, method_label

EXIT_LAYERS = [1, 2, 3]  # three LGViT heads on the 4-layer tiny DeiT; the final classifier answers at layer 4
EVAL_SAMPLES = 45
LABELS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])

# ------------------------------------------------------------------------------------------- loss terms


def tiny_model(**fields) -> DeiTHighwayForImageClassification:
    torch.manual_seed(0)
    return DeiTHighwayForImageClassification(DeiTHighwayConfig(
        hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=48, image_size=16,
        patch_size=4, num_labels=5, highway_type="LGViT", num_early_exits=4, loss_coefficient=0.3,
        homo_coefficient=0.02, hete_coefficient=0.05, **fields))


def expected_weights(strategy: str, step: int) -> dict[str, float]:
    """The weight of every term, written out for 4 exits at layers 2..5 of 6 (final classifier `exit_6`)."""
    exits, alpha = [2, 3, 4, 5], 0.3
    if strategy.startswith("alternating") and step % 2 == 0:
        return {**{f"exit_{layer}": 0.0 for layer in exits}, "exit_6": 1.0}
    if strategy in ("normal", "alternating"):
        return {f"exit_{layer}": 1 / 5 for layer in [*exits, 6]}
    if strategy in ("weighted", "alternating_weighted"):
        return {f"exit_{layer}": layer / 20 for layer in [*exits, 6]}
    if strategy == "distillation":
        return {**{f"exit_{layer}": 0.7 / 5 for layer in [*exits, 6]},
                **{f"exit_{layer}_kd": alpha / 4 for layer in exits}}
    if strategy == "stage2_distillation":
        return {**{f"exit_{layer}": 0.7 * (layer - 1) / 10 for layer in exits},
                **{f"exit_{layer}_kd": alpha / 4 for layer in exits}}
    # distillation_LGViT: local heads on layers 2, 3, global heads on 4, 5 (the deepest of each group takes no
    # homogeneous term; the first and the last of each take a heterogeneous one).
    return {**{f"exit_{layer}": 0.7 for layer in exits}, **{f"exit_{layer}_kd": alpha for layer in exits},
            **{f"exit_{layer}_hete": 0.05 for layer in exits}, "exit_2_homo": 0.02, "exit_4_homo": 0.02}


@pytest.mark.parametrize("strategy, step", [
    ("normal", 0), ("weighted", 0), ("alternating", 0), ("alternating", 1), ("alternating_weighted", 2),
    ("alternating_weighted", 3), ("distillation", 0), ("stage2_distillation", 0), ("distillation_LGViT", 0),
])
def test_the_loss_is_the_weighted_sum_of_its_named_terms(strategy: str, step: int) -> None:
    fields = ({"train_strategy": "distillation", "freeze_backbone": True} if strategy == "stage2_distillation"
              else {"train_strategy": strategy})
    model = tiny_model(position_exits=[2, 3, 4, 5], **fields).train()
    model.alternation_phase = step % 2
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    outputs = model(images, labels=LABELS, output_loss_terms=True)
    terms = outputs.loss_terms
    assert {name: term.weight for name, term in terms.items()} == pytest.approx(expected_weights(strategy, step))
    assert outputs.loss.item() == pytest.approx(sum(term.weight * term.value.item() for term in terms.values()),
                                                rel=1e-6)
    assert not any(term.value.requires_grad for term in terms.values())
    for layer, logits in zip([2, 3, 4, 5], outputs.exit_logits):
        assert terms[f"exit_{layer}"].value.item() == pytest.approx(F.cross_entropy(logits, LABELS).item(), rel=1e-6)
        if f"exit_{layer}_kd" in terms:
            kd = prediction_distillation(logits, outputs.final_logits, 2.0)
            assert terms[f"exit_{layer}_kd"].value.item() == pytest.approx(kd.item(), rel=1e-6)
    assert model(images, labels=LABELS).loss_terms is None  # only when asked


def test_classifier_names_keep_the_final_classifier_apart_from_a_head_on_the_last_layer() -> None:
    assert classifier_names([4, 8, 11], 12) == ["exit_4", "exit_8", "exit_11", "exit_12"]
    assert classifier_names([6, 12], 12) == ["exit_6", "exit_12", "final"]


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value)


def test_the_logging_window_averages_like_the_trainer() -> None:
    """Two optimiser steps of two micro-batches each; the second micro-batch of each step weighs the exit 0 (as an
    alternating strategy's even step would). The window's weighted terms add up to the mean of the micro-batch
    losses, averaged over steps, as the Trainer's `loss` is."""
    window = LossWindow()
    micro_batches = [  # (exit term, final term, exit weight, final weight)
        (2.0, 1.0, 0.5, 0.5), (4.0, 3.0, 0.0, 1.0), (6.0, 5.0, 0.5, 0.5), (8.0, 7.0, 0.0, 1.0)]
    losses = []
    for exit_value, final_value, exit_weight, final_weight in micro_batches:
        window.add({"exit_1": LossTerm(scalar(exit_value), exit_weight),
                    "exit_2": LossTerm(scalar(final_value), final_weight)}, images=4, micro_batches=2)
        losses.append(exit_weight * exit_value + final_weight * final_value)
    logs = window.logs(lambda tensor: tensor * 2, processes=2)  # two processes that saw the same values
    trainer_loss = sum(losses) / 2 / 2  # each step the mean of its micro-batches, then the mean over steps
    assert logs["loss_weight_exit_1"] == pytest.approx(0.25)
    assert logs["loss_weight_exit_2"] == pytest.approx(0.75)
    assert logs["loss_exit_1"] == pytest.approx(4.0)  # the micro-batches that weighed it: (2 + 6) / 2
    assert logs["loss_exit_2"] == pytest.approx((0.5 * 1 + 3 + 0.5 * 5 + 7) / 3)
    assert sum(logs[f"loss_weight_exit_{n}"] * logs[f"loss_exit_{n}"] for n in (1, 2)) == pytest.approx(trainer_loss)
    assert logs["images_per_second"] > 0
    assert window.logs(lambda tensor: tensor, processes=1) == {}  # a new window starts empty


# ------------------------------------------------------------------------------------- runs on the digits


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1 (from a preset file, alternating weighted loss, 2 micro-batches a step, evaluated during training),
    stage 2 (distillation_LGViT), an evaluation with --sweep, all to TensorBoard and offline wandb, then the
    comparison of the one method to offline wandb."""
    root = tmp_path_factory.mktemp("dashboards")
    report = {"report_to": ["tensorboard", "wandb"], "logging_steps": 1}
    preset = root / "stage1_preset.yaml"  # a list of report_to targets can only come from a file
    preset.write_text(yaml.safe_dump({"highway_type": "LGViT", "num_early_exits": 3, "train_strategy":
                                      "alternating_weighted", "exit_strategy": "confidence", "threshold": 0.5,
                                      **report}))
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("WANDB_SILENT", "true")
        environment.setenv("WANDB_MODE", "offline")
        environment.setenv("WANDB_DIR", str(root))
        environment.setenv("WANDB_PROJECT", "dashboards")
        stage1 = run_args(root / "stage1", config_name=write_tiny_config(root), max_steps=4, run_name="stage1",
                          gradient_accumulation_steps=2, per_device_train_batch_size=8, eval_strategy="steps",
                          eval_steps=2)
        del stage1["report_to"]
        run_classification.main([str(preset), *(text for name, value in stage1.items()
                                                for text in (f"--{name}", str(value)))])
        run_classification.main(run_args(root / "stage2", model_name_or_path=str(root / "stage1"), run_name="stage2",
                                         train_strategy="distillation_LGViT", **report))
        run_classification.main(run_args(root / "LGViT" / "eval", model_name_or_path=str(root / "stage2"),
                                         do_train=False, sweep=True, run_name="eval", **report))
        (root / "base").mkdir()
        (root / "base" / "eval_results.json").write_text((root / "stage1" / "eval_results.json").read_text())
        compare_methods.main([str(root), "LGViT", "--report_to", "wandb"])
    return root


def training_logs(run_dir: Path) -> list[dict]:
    return [entry for entry in read_json(run_dir / "trainer_state.json")["log_history"] if "loss" in entry]


def evaluation_logs(run_dir: Path) -> list[dict]:
    return [entry for entry in read_json(run_dir / "trainer_state.json")["log_history"] if "eval_loss" in entry]


STAGE1_TERMS = [f"exit_{layer}" for layer in [*EXIT_LAYERS, NUM_LAYERS]]
# LGViT's heads on layers 1-3 of the tiny DeiT: a local head on 1, global heads on 2 and 3 (the first and the last
# head of each group match the last block; the global group's shallower head matches its deepest).
STAGE2_TERMS = ["exit_1", "exit_2", "exit_3", "exit_1_kd", "exit_2_kd", "exit_3_kd", "exit_1_hete", "exit_2_hete",
                "exit_3_hete", "exit_2_homo"]


@pytest.mark.parametrize("stage, terms", [("stage1", STAGE1_TERMS), ("stage2", STAGE2_TERMS)])
def test_every_training_log_holds_each_term_whose_weighted_sum_is_the_loss(runs: Path, stage: str,
                                                                            terms: list[str]) -> None:
    logs = training_logs(runs / stage)
    assert len(logs) == (4 if stage == "stage1" else 3)  # one per optimiser step
    for entry in logs:
        names = {key[len("loss_weight_"):] for key in entry if key.startswith("loss_weight_")}
        assert names == set(terms)
        assert all(math.isfinite(entry[f"loss_{name}"]) and entry[f"loss_{name}"] >= 0 for name in terms)
        assert sum(entry[f"loss_weight_{name}"] * entry[f"loss_{name}"] for name in terms) == pytest.approx(
            entry["loss"], rel=1e-5)
        assert entry["images_per_second"] > 0
        assert 0 <= entry["data_wait_share"] <= 1
    for name in terms[:3]:  # the cross-entropies of untrained heads on 10 classes start near log(10)
        assert logs[0][f"loss_{name}"] == pytest.approx(math.log(10), rel=0.2)


def test_stage1_alternates_once_per_optimizer_step(runs: Path) -> None:
    """Both micro-batches of a step take the same loss: even steps the final classifier alone, odd steps the
    layer-weighted loss (layers 1, 2, 3 and the final classifier's 4 over 10), whatever the accumulation."""
    weights = [[entry[f"loss_weight_exit_{n}"] for n in (1, 2, 3, 4)] for entry in training_logs(runs / "stage1")]
    assert weights == [pytest.approx(step) for step in [[0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4]] * 2]


def offline_exit_accuracies(model_dir: Path) -> dict[str, float]:
    """Each classifier's accuracy on the run's evaluation images, from one pass with every exit, here."""
    outputs, labels, model = full_depth_pass(model_dir, EVAL_SAMPLES)
    classifiers = [*outputs.exit_logits, outputs.final_logits]
    names = classifier_names(model.config.exit_positions(), model.config.num_blocks)
    return {f"eval_accuracy_{name}": (logits.argmax(-1) == labels).double().mean().item()
            for name, logits in zip(names, classifiers)}


@pytest.mark.parametrize("stage", ["stage1", "stage2", "LGViT/eval"])
def test_per_exit_accuracies_are_those_of_an_offline_pass(runs: Path, stage: str) -> None:
    results = read_json(runs / stage / "eval_results.json")
    model_dir = runs / ("stage2" if stage == "LGViT/eval" else stage)
    expected = offline_exit_accuracies(model_dir)
    assert set(expected) == {f"eval_accuracy_exit_{n}" for n in (1, 2, 3, 4)}
    assert {key: results[key] for key in expected} == pytest.approx(expected, abs=1e-9)
    # The early-exit accuracy and the exit counts are still the per-sample early exit's.
    assert sum(results[f"eval_counts_exit_layer_{n}"] for n in range(1, NUM_LAYERS + 1)) == EVAL_SAMPLES


def test_every_evaluation_during_training_reports_each_exit(runs: Path) -> None:
    evaluations = evaluation_logs(runs / "stage1")
    assert [entry["step"] for entry in evaluations] == [2, 4]  # (the final evaluation comes after the state is saved)
    for entry in evaluations:
        assert all(0.0 <= entry[f"eval_accuracy_exit_{n}"] <= 1.0 for n in (1, 2, 3, 4))


def tensorboard_events(run_dir: Path) -> EventAccumulator:
    (log_dir,) = (run_dir / "runs").iterdir()
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


@pytest.mark.parametrize("stage, terms", [("stage1", STAGE1_TERMS), ("stage2", STAGE2_TERMS)])
def test_tensorboard_holds_the_same_values(runs: Path, stage: str, terms: list[str]) -> None:
    events = tensorboard_events(runs / stage)
    logs = training_logs(runs / stage)
    for key in ["loss", "images_per_second", *(f"loss_{name}" for name in terms),
                *(f"loss_weight_{name}" for name in terms)]:
        logged = [(event.step, event.value) for event in events.Scalars(f"train/{key}")]
        assert logged == [(entry["step"], pytest.approx(entry[key], rel=1e-6)) for entry in logs], key
    final = read_json(runs / stage / "eval_results.json")
    for n in (1, 2, 3, 4):
        assert events.Scalars(f"eval/accuracy_exit_{n}")[-1].value == pytest.approx(final[f"eval_accuracy_exit_{n}"])
        assert events.Scalars(f"eval/counts_exit_layer_{n}")[-1].value == final[f"eval_counts_exit_layer_{n}"]
    histograms = events.Histograms("eval/exit_distribution")
    assert len(histograms) == len(evaluation_logs(runs / stage)) + 1  # those during training, and the final one
    assert histograms[-1].histogram_value.bucket == [final[f"eval_counts_exit_layer_{n}"] for n in (1, 2, 3, 4)]
    assert histograms[-1].histogram_value.num == EVAL_SAMPLES


def test_an_evaluation_only_run_writes_tensorboard_into_its_output_dir(runs: Path) -> None:
    events = tensorboard_events(runs / "LGViT" / "eval")
    assert "eval/accuracy_exit_1" in events.Tags()["scalars"]
    assert events.Tags()["histograms"] == ["eval/exit_distribution"]


@pytest.fixture(scope="module")
def wandb_runs(runs: Path) -> dict:
    return offline_runs(runs)


def test_wandb_runs_group_by_backbone_dataset_and_method(runs: Path, wandb_runs: dict) -> None:
    assert set(wandb_runs) == {"stage1", "stage2", "eval", f"comparison_{runs.name}"}
    for stage in ("stage1", "stage2", "eval"):
        run = wandb_runs[stage]
        assert run.group == "ViT-digits-LGViT"
        assert run.job_type == stage
        assert run.tags == ["ViT", "digits", "LGViT", stage]
        assert run.config["run_labels"] == {"backbone": "ViT", "dataset": "digits", "method": "LGViT",
                                            "stage": stage}
        assert len(run.config["code_version"]["commit"]) == 40
    (preset,) = wandb_runs["stage1"].config["argument_files"]
    assert preset["file"].endswith("stage1_preset.yaml")
    assert preset["settings"]["train_strategy"] == "alternating_weighted"
    assert wandb_runs["stage2"].config["argument_files"] == []


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_wandb_history_holds_the_training_keys_and_the_exit_histogram(runs: Path, wandb_runs: dict,
                                                                      stage: str) -> None:
    run = wandb_runs[stage]
    logs = training_logs(runs / stage)
    terms = STAGE1_TERMS if stage == "stage1" else STAGE2_TERMS
    for key in ["loss", "images_per_second", *(f"loss_{name}" for name in terms),
                *(f"loss_weight_{name}" for name in terms)]:
        assert run.values(f"train/{key}") == pytest.approx([entry[key] for entry in logs]), key
    final = read_json(runs / stage / "eval_results.json")
    assert run.values("eval/accuracy_exit_4")[-1] == pytest.approx(final["eval_accuracy_exit_4"])
    assert run.values("eval/exit_distribution/_type")[-1] == "histogram"
    assert run.values("eval/exit_distribution/values")[-1] == [final[f"eval_counts_exit_layer_{n}"]
                                                               for n in (1, 2, 3, 4)]
    assert run.values("eval/exit_distribution/bins")[-1] == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_the_sweep_goes_to_wandb_as_tables_with_a_line_plot(runs: Path, wandb_runs: dict) -> None:
    run = wandb_runs["eval"]
    sweep = read_json(runs / "LGViT" / "eval" / "sweep.json")["curves"]
    table = run.table("analysis/sweep")
    criterion, accuracy = table["columns"].index("criterion"), table["columns"].index("accuracy")
    assert [(row[criterion], row[accuracy]) for row in table["data"]] == [
        (name, pytest.approx(point["accuracy"])) for name, points in sweep.items() for point in points]
    curve = run.table("analysis/tradeoff_curve_table")
    assert {row[curve["columns"].index("criterion")] for row in curve["data"]} == set(sweep)
    assert "analysis/tradeoff" in {key.rsplit("/", 1)[0] for row in run.history for key in row}  # the PNG stays


def test_the_comparison_goes_to_wandb_as_a_table_and_a_line_plot(runs: Path, wandb_runs: dict) -> None:
    (run,) = [run for run in wandb_runs.values() if run.job_type == "compare"]
    assert "LGViT" in run.tags
    table = run.table("comparison/table")
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [row["method"] for row in rows] == ["LGViT"]
    assert rows[0]["accuracy"] == pytest.approx(read_json(runs / "LGViT" / "eval" / "analysis_results.json")[
        "accuracy"])
    curve = run.table("comparison/tradeoff_curve_table")
    assert {row[curve["columns"].index("method")] for row in curve["data"]} == {"LGViT (confidence)"}


def test_the_dashboard_figure_is_drawn_from_the_tensorboard_logs(runs: Path, tmp_path: Path) -> None:
    written = dashboard_figure.main([str(runs / "stage1"), str(runs / "stage2"), "--output", str(tmp_path / "d.png")])
    assert written.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="--report_to tensorboard"):
        dashboard_figure.read_events(tmp_path)


# ------------------------------------------------------------------------------------------ run labels


@pytest.mark.parametrize("preset", sorted(path.stem for path in METHODS_DIR.glob("*.yaml")))
def test_a_stage1_configuration_is_recognised_as_its_method(preset: str) -> None:
    settings = yaml.safe_load((METHODS_DIR / f"{preset}.yaml").read_text())
    config = DeiTHighwayConfig(**{name: settings[name] for name in
                                  ("highway_type", "num_early_exits", "position_exits", "train_strategy",
                                   "exit_strategy")})
    assert method_label(config, []) == preset
    assert method_label(config, [str(METHODS_DIR / "SDN.yaml")]) == "SDN"  # a preset given on the command line


def test_an_unknown_or_ambiguous_configuration_is_custom() -> None:
    linear = {"highway_type": "linear", "num_early_exits": 3, "position_exits": [1, 2, 3]}
    assert method_label(DeiTHighwayConfig(**linear, train_strategy="normal", exit_strategy="entropy"), []) == "custom"
    # Stage 2 keeps no stage-1 strategy: SDN and BERxiT (linear heads, confidence) can no longer be told apart.
    stage2 = DeiTHighwayConfig(**linear, train_strategy="distillation", freeze_backbone=True,
                               exit_strategy="confidence")
    assert method_label(stage2, []) == "custom"
    assert method_label(DeiTHighwayConfig(num_early_exits=0), []) == "no-exits"

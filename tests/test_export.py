"""ONNX export with the early exit intact: the onnxruntime session gives the PyTorch model's exit layers and logits,
at any batch size, for every head type, criterion and backbone; half precision; the command-line entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from analysis_helpers import tiny_model
from decision_helpers import spread_logits, thresholds_away_from_scores
from PIL import Image
from safetensors.torch import load_file
from test_checkpoint_formats import fixture_decisions

from models import DeiTHighwayForImageClassification, SwinHighwayForImageClassification
from models.criteria import EXIT_CRITERIA, get_criterion
from utils.export import EarlyExitSession, export_onnx
from utils.export.__main__ import main as export_main
from utils.export.early_exit_graph import early_exit_graph
from utils.export.predict import main as predict_main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "original"
INPUTS = load_file(FIXTURES / "inputs.safetensors")
CASES = {**json.loads((FIXTURES / "deit_cases.json").read_text()),
         **json.loads((FIXTURES / "swin_cases.json").read_text())}
# Every head type: LGViT (conv1_1, conv2_1, attention_r2/r3) on ViT, conv_normal and linear and the ViT-EE layer on
# DeiT, self_attention on ViT, and the LGViT and linear heads on Swin.
FIXTURE_CASES = ["vit_lgvit", "deit_convnormal", "deit_linear", "deit_vitee", "vit_selfattn", "swin_lgvit",
                 "swin_linear"]


def fixture_model(case: str):
    model_class = SwinHighwayForImageClassification if case.startswith("swin") else DeiTHighwayForImageClassification
    return model_class.from_original(CASES[case]["original_config"],
                                     load_file(FIXTURES / f"{case}.weights.safetensors")).eval()


@pytest.fixture(scope="module")
def exported_fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, Path]]:
    root = tmp_path_factory.mktemp("onnx")
    exports = {}
    for case in FIXTURE_CASES:
        model = fixture_model(case)
        export_onnx(model, root / case, exporter="torchscript")
        exports[case] = (model, root / case)
    return exports


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_onnx_runtime_reproduces_the_original_decisions_in_one_batch(exported_fixtures, case):
    _, directory = exported_fixtures[case]
    session = EarlyExitSession(directory)
    for strategy, threshold, patience, layers, logits in fixture_decisions(case):
        session.exit_strategy, session.threshold = strategy, threshold
        session.patience = patience or get_criterion(strategy).default_patience
        predicted, exit_layer = session(INPUTS["pixel_values"].numpy())
        assert exit_layer.tolist() == layers, strategy
        np.testing.assert_allclose(predicted, logits.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["vit_lgvit", "swin_lgvit"])
@pytest.mark.parametrize("criterion", sorted(EXIT_CRITERIA))
def test_random_thresholds_give_pytorchs_decisions_at_any_batch_size(exported_fixtures, case, criterion):
    model, directory = exported_fixtures[case]
    session = EarlyExitSession(directory)
    pixel_values = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        every = model(pixel_values, early_exit=False)
    generator = torch.Generator().manual_seed(5)
    seen = set()
    for trial in range(2):
        thresholds = thresholds_away_from_scores(criterion, torch.stack(every.exit_logits), generator, 1e-4)
        for target in (model.config, session):
            target.exit_strategy, target.threshold, target.patience = criterion, thresholds, 1 + trial
        with torch.no_grad():
            expected = model(pixel_values)
        for batch in (12, 5):
            logits, exit_layer = session(pixel_values[:batch].numpy())
            assert exit_layer.tolist() == expected.exit_layer[:batch].tolist()
            np.testing.assert_allclose(logits, expected.logits[:batch].numpy(), atol=1e-4, rtol=1e-4)
        for image in range(len(pixel_values)):  # batches of one run their own graph
            logits, exit_layer = session(pixel_values[image:image + 1].numpy())
            assert exit_layer.tolist() == expected.exit_layer[image:image + 1].tolist()
            np.testing.assert_allclose(logits, expected.logits[image:image + 1].numpy(), atol=1e-4, rtol=1e-4)
        seen.update(expected.exit_layer.tolist())
    assert len(seen) >= 2, "the thresholds should send samples to several exits"


def test_half_precision_export_keeps_the_float32_decisions(tmp_path):
    pixel_values = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    model = spread_logits(tiny_model(seed=2), pixel_values)
    with torch.no_grad():
        every = model(pixel_values, early_exit=False)
    thresholds = thresholds_away_from_scores("confidence", torch.stack(every.exit_logits),
                                             torch.Generator().manual_seed(1), 2e-2)
    model.config.exit_strategy, model.config.threshold = "confidence", thresholds
    with torch.no_grad():
        expected = model(pixel_values)
    export_onnx(model, tmp_path / "fp16", exporter="torchscript", dtype="float16")
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left in float32
    session = EarlyExitSession(tmp_path / "fp16")
    assert session.manifest["dtype"] == "float16"
    logits, exit_layer = session(pixel_values.numpy())
    assert exit_layer.tolist() == expected.exit_layer.tolist() and len(set(exit_layer.tolist())) >= 2
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=2e-2, rtol=2e-2)
    one_by_one = [session(image[None].numpy())[1].item() for image in pixel_values]
    assert one_by_one == expected.exit_layer.tolist()
    with pytest.raises(ValueError, match="bfloat16"):
        export_onnx(model, tmp_path / "bf16", dtype="bfloat16")


def test_the_default_dynamo_exporter(tmp_path):
    """torch.export-based graphs (the default exporter), in a batch and image by image (the single-image graph),
    with the plain classifier beside the segments. (A Swin export with it takes minutes on a CPU: not in the suite.)"""
    model = tiny_model(seed=3, num_early_exits=2, position_exits=[2, 4], highway_type="LGViT")
    export_onnx(model, tmp_path / "dynamo", full_model=True)
    session = EarlyExitSession(tmp_path / "dynamo")
    pixel_values = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first_exit = model(pixel_values, early_exit=False).exit_logits[0]
    scores = get_criterion("entropy").score(first_exit).sort().values  # a threshold between two images' scores
    exits_seen = set()
    for threshold in (0.0, float(scores[2] + scores[3]) / 2, 2.0):
        model.config.threshold = session.threshold = threshold
        with torch.no_grad():
            expected = model(pixel_values)
        logits, exit_layer = session(pixel_values.numpy())
        assert exit_layer.tolist() == expected.exit_layer.tolist()
        np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4, rtol=1e-4)
        for row in range(len(pixel_values)):
            one_logits, one_exit = session(pixel_values[row:row + 1].numpy())
            assert one_exit.tolist() == expected.exit_layer[row:row + 1].tolist()
            np.testing.assert_allclose(one_logits, expected.logits[row:row + 1].numpy(), atol=1e-4, rtol=1e-4)
        exits_seen.update(expected.exit_layer.tolist())
    assert (session.exit_strategy, True) in session.graphs and len(exits_seen) > 1
    full = onnxruntime.InferenceSession(str(tmp_path / "dynamo" / "full_model.onnx"))
    with torch.no_grad():
        np.testing.assert_allclose(full.run(None, {"pixel_values": pixel_values.numpy()})[0],
                                   model(pixel_values, early_exit=False).final_logits.numpy(), atol=1e-4, rtol=1e-4)


def test_the_command_lines_export_a_saved_model_and_classify_a_folder(tmp_path, capsys):
    model = tiny_model(seed=4, exit_strategy="entropy", threshold=1.0)
    model.config.id2label = {index: f"class{index}" for index in range(5)}
    model.save_pretrained(tmp_path / "model")
    export_main([str(tmp_path / "model"), str(tmp_path / "onnx"), "--exporter", "torchscript",
                 "--exit_strategy", "confidence", "--threshold", "0.3"])
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["exit_strategy"] == "confidence" and manifest["threshold"] == [0.3] * 6
    assert manifest["image_size"] == [16, 16] and len(manifest["image_mean"]) == 3
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            images / f"{index}.png")
    (images / "notes.txt").write_text("not an image")
    predict_main([str(tmp_path / "onnx"), str(images), "--threshold", "0.0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("exit layer 1" in line and "\tclass" in line for line in lines[:3])
    assert lines[-1].startswith("3 images, average exit layer 1.00")


def test_the_export_module_runs_as_a_command(tmp_path):
    finished = subprocess.run([sys.executable, "-m", "utils.export", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 0 and "model_dir" in finished.stdout


def test_the_runtime_is_one_graph_whose_batch_shrinks_at_every_exit(exported_fixtures):
    """The segments sit in nested `If` nodes, one per exit: when every row leaves, the exit's logits come out; else
    the staying rows are picked out (Compress) and only they run the next segment."""
    model, directory = exported_fixtures["vit_lgvit"]
    session = EarlyExitSession(directory)
    session(INPUTS["pixel_values"].numpy())
    assert list(session.graphs) == [(session.exit_strategy, False)]
    segments = [onnx.load(directory / name) for name in session.manifest["segments"]]
    graph = early_exit_graph(segments, session.exit_strategy, session.exit_layers, session.num_blocks).graph
    for index in range(len(session.exit_layers)):
        (branching,) = [node for node in graph.node if node.op_type == "If"]
        otherwise = next(attribute.g for attribute in branching.attribute if attribute.name == "else_branch")
        kept = {node.output[0] for node in otherwise.node if node.op_type == "Compress"}
        next_segment = [node for node in otherwise.node if node.name.startswith(f"segment{index + 1}_")]
        assert kept & {name for node in next_segment for name in node.input}, f"exit {index + 1}"
        graph = otherwise
    assert not [node for node in graph.node if node.op_type == "If"]


def test_a_single_image_runs_a_graph_that_only_branches(exported_fixtures):
    """At batch size 1 the image either leaves or runs on whole: one `If` per exit on its own decision, and no rows
    picked out or written back."""
    model, directory = exported_fixtures["vit_lgvit"]
    session = EarlyExitSession(directory)
    session(INPUTS["pixel_values"][:1].numpy())
    assert list(session.graphs) == [(session.exit_strategy, True)]
    segments = [onnx.load(directory / name) for name in session.manifest["segments"]]
    graph = early_exit_graph(segments, session.exit_strategy, session.exit_layers, session.num_blocks,
                             single_row=True).graph
    for index in range(len(session.exit_layers)):
        assert not {"Compress", "ScatterND", "ReduceMin"} & {node.op_type for node in graph.node}, f"exit {index + 1}"
        (branching,) = [node for node in graph.node if node.op_type == "If"]
        graph = next(attribute.g for attribute in branching.attribute if attribute.name == "then_branch")
        assert any(node.name.startswith(f"segment{index + 1}_") for node in graph.node), f"exit {index + 1}"
    assert not [node for node in graph.node if node.op_type == "If"]

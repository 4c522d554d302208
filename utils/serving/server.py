"""A server for a saved model or an ONNX export: load it, place it, build its engine, metrics and HTTP
application."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI
from transformers import AutoModelForImageClassification

import models  # noqa: F401  (registers the classes with the Auto classes)
from utils.data.transforms import image_normalization
from utils.export.onnx_export import MANIFEST
from utils.export.session import default_providers

from .app import RequestLimits, create_app
from .engine import ExitEngine
from .metrics import ServingMetrics
from .pipelines import SegmentPipeline, onnx_pipeline, segment_pipeline
from .preprocess import ImagePreprocessor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineOptions:
    """How the model runs and is scheduled (see `ExitEngine` and docs/serving.md for choosing the limits)."""

    max_batch: int = 32
    max_wait: float = 0.0
    max_queue: int = 256
    order: str = "fullest"
    max_delay: float = float("inf")
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False


def load_model(model_dir: str, options: EngineOptions) -> torch.nn.Module:
    """The saved model in evaluation mode on the chosen device and dtype, its segments compiled if asked."""
    if options.dtype not in DTYPES:
        raise ValueError(f"dtype={options.dtype!r}: choose one of {', '.join(DTYPES)}.")
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    if not hasattr(model, "segment_runs"):
        raise ValueError(f"{model_dir} holds a {type(model).__name__}, not a model with exits of this project.")
    model = model.to(options.device, DTYPES[options.dtype]).eval()
    if options.compile:
        model.compile_exits()
    return model


def build_app(model_dir: str, options: EngineOptions = EngineOptions(),
              limits: RequestLimits = RequestLimits()) -> FastAPI:
    """The HTTP application serving `model_dir` with its saved exit settings: a saved model (`save_pretrained`) run
    by PyTorch, or an export (`python -m utils.export`, a directory with `manifest.json`) run by onnxruntime."""
    if (Path(model_dir) / MANIFEST).is_file():
        pipeline, preprocessor, id2label = onnx_served(model_dir, options)
    else:
        pipeline, preprocessor, id2label = pytorch_served(model_dir, options)
    metrics = ServingMetrics([*pipeline.exit_layers, pipeline.num_blocks], pipeline.num_stages, options.max_batch)
    engine = ExitEngine(pipeline, options.max_batch, options.max_wait, options.max_queue, options.order, metrics,
                        options.max_delay)
    metrics.watch_queues(engine.queue_depths)
    return create_app(engine, preprocessor, id2label, metrics, limits)


def pytorch_served(model_dir: str, options: EngineOptions
                   ) -> tuple[SegmentPipeline, ImagePreprocessor, dict[int, str]]:
    """The pipeline, image preparation and labels of a saved model."""
    model = load_model(model_dir, options)
    config = model.config
    preprocessor = ImagePreprocessor(config.image_size, *image_normalization(model_dir))
    return segment_pipeline(model), preprocessor, {int(k): v for k, v in config.id2label.items()}


def onnx_served(export_dir: str, options: EngineOptions) -> tuple[SegmentPipeline, ImagePreprocessor, dict[int, str]]:
    """The pipeline, image preparation and labels of an ONNX export; its dtype was fixed when it was exported."""
    if options.dtype != "float32" or options.compile:
        raise ValueError(f"{export_dir} is an ONNX export, whose dtype was chosen at export: serve it without "
                         "--dtype and --compile (or serve the saved model with them).")
    manifest = json.loads((Path(export_dir) / MANIFEST).read_text())
    if manifest["image_mean"] is None or manifest["image_std"] is None:
        raise ValueError(f"{export_dir}/{MANIFEST} has no image normalisation; export again with "
                         "`python -m utils.export MODEL_DIR OUT_DIR`, which writes the model's.")
    providers = default_providers() if options.device.startswith("cuda") else ["CPUExecutionProvider"]
    pipeline = onnx_pipeline(export_dir, providers)
    preprocessor = ImagePreprocessor(manifest["image_size"], manifest["image_mean"], manifest["image_std"])
    return pipeline, preprocessor, {int(k): v for k, v in manifest["id2label"].items()}

"""A server for a saved model: load it, place it, build its engine, metrics and HTTP application."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fastapi import FastAPI
from transformers import AutoModelForImageClassification

import models  # noqa: F401  (registers the classes with the Auto classes)
from utils.data.transforms import image_normalization

from .app import RequestLimits, create_app
from .engine import ExitEngine
from .metrics import ServingMetrics
from .pipelines import segment_pipeline
from .preprocess import ImagePreprocessor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineOptions:
    """How the model runs and is scheduled (see `ExitEngine` and docs/serving.md for choosing the limits)."""

    max_batch: int = 32
    max_wait: float = 0.0
    max_queue: int = 256
    order: str = "deepest"
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
    """The HTTP application serving the model saved in `model_dir` with its saved exit settings."""
    model = load_model(model_dir, options)
    config = model.config
    pipeline = segment_pipeline(model)
    metrics = ServingMetrics([*config.exit_positions(), config.num_blocks], pipeline.num_stages, options.max_batch)
    engine = ExitEngine(pipeline, options.max_batch, options.max_wait, options.max_queue, options.order, metrics,
                        options.max_delay)
    metrics.watch_queues(engine.queue_depths)
    preprocessor = ImagePreprocessor(config.image_size, *image_normalization(model_dir))
    return create_app(engine, preprocessor, {int(k): v for k, v in config.id2label.items()}, metrics, limits)

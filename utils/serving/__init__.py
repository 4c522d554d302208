"""Serving models with exits: an engine that answers every image at its exit and re-forms batches at every depth,
and an HTTP server around it.

    python -m utils.serving --model_dir MODEL_DIR [--port 8000] [--max_batch 32] [--max_wait_ms 0]

    from utils.serving import ExitEngine, segment_pipeline
    with ExitEngine(segment_pipeline(model), max_batch=32) as engine:
        prediction = engine.submit(images)[0].result()
"""

from .cli import build_parser
from .engine import EngineFull, EngineStopped, ExitEngine, Prediction
from .pipelines import SegmentPipeline, WholePipeline, onnx_pipeline, segment_pipeline

__all__ = ["EngineFull", "EngineStopped", "ExitEngine", "Prediction", "SegmentPipeline", "WholePipeline",
           "build_parser", "onnx_pipeline", "segment_pipeline"]

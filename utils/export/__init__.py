"""Deployment: ONNX export with the early exit intact, and its onnxruntime session.

    python -m utils.export MODEL_DIR OUT_DIR             # write the segment graphs and manifest.json
    python -m utils.export.predict OUT_DIR IMAGE_DIR     # predictions and exit layers for a folder of images

    from utils.export import EarlyExitSession
    logits, exit_layer = EarlyExitSession(OUT_DIR)(pixel_values)
"""

from .onnx_export import export_onnx
from .session import EarlyExitSession

__all__ = ["EarlyExitSession", "export_onnx"]

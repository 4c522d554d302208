"""Shared set-up of the serving tests: tiny models whose images spread over the exits, pipelines that can be held
at a stage or made to fail, PNG uploads and a saved model to serve them."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from analysis_helpers import tiny_model, tiny_swin
from decision_helpers import spread_logits, thresholds_away_from_scores
from PIL import Image

from models.criteria import State
from utils.data.transforms import image_processor
from utils.serving.pipelines import StageOutput
from utils.serving.preprocess import ImagePreprocessor

MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
ROOT = Path(__file__).resolve().parents[1]


def spread_model(backbone: str = "DeiT", criterion: str = "confidence", num_images: int = 32, seed: int = 0
                 ) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny model (DeiT with 6 exits, or Swin with 4) and images; its exit settings send the images to several
    exits, with every threshold away from every score (batch composition cannot flip a decision)."""
    size = 32 if backbone == "Swin" else 16
    images = torch.randn(num_images, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    model = tiny_swin(seed) if backbone == "Swin" else tiny_model(seed)
    model = spread_logits(model, images)
    with torch.no_grad():
        every = model(images, early_exit=False)
    generator = torch.Generator().manual_seed(seed + 2)
    model.config.exit_strategy = criterion
    model.config.threshold = thresholds_away_from_scores(criterion, torch.stack(every.exit_logits), generator, 1e-3)
    model.config.patience = 2
    return model, images


class GatedPipeline:
    """Wraps a pipeline: a stage listed in `gated` waits for `release` before it runs; `fail_stage` raises; every
    run is logged as (stage, rows)."""

    def __init__(self, pipeline, gated: tuple[int, ...] = (), fail_stage: int | None = None):
        self.pipeline = pipeline
        self.num_stages = pipeline.num_stages
        self.image_shape = pipeline.image_shape
        self.gated, self.fail_stage = gated, fail_stage
        self.release = threading.Event()
        self.entered = threading.Event()
        self.log: list[tuple[int, int]] = []

    def initial_state(self, batch_size: int) -> State:
        return self.pipeline.initial_state(batch_size)

    def run(self, stage: int, inputs: torch.Tensor, state: State) -> StageOutput:
        self.log.append((stage, len(inputs)))
        if stage in self.gated:
            self.entered.set()
            self.release.wait(10)
        if stage == self.fail_stage:
            raise RuntimeError("planted failure")
        return self.pipeline.run(stage, inputs, state)


def png(seed: int, size: tuple[int, int] = (20, 24)) -> bytes:
    """A PNG of seeded noise pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def image_files(seeds) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The multipart files of one upload per seed (field `images`)."""
    return [("images", (f"{seed}.png", png(seed), "image/png")) for seed in seeds]


def save_served_model(directory: Path) -> torch.nn.Module:
    """A tiny DeiT whose saved confidence thresholds spread PNG uploads over the exits, saved with its processor in
    `directory`."""
    model, _ = spread_model("DeiT", "confidence")
    preprocessor = ImagePreprocessor(16, MEAN, STD)
    uploads = torch.stack([preprocessor(png(seed)) for seed in range(12)])
    with torch.no_grad():
        confidences = torch.stack(model(uploads, early_exit=False).exit_logits).softmax(-1).amax(-1)
    # per exit, half of the uploads still running at it leave (the threshold halfway between two scores, so no
    # rounding flips a decision); the last exit lets none leave
    running, thresholds = torch.ones(len(uploads), dtype=torch.bool), []
    for scores in confidences[:-1]:
        ranked = scores[running].sort().values
        middle = len(ranked) // 2
        thresholds.append(float(ranked[middle - 1:middle + 1].mean()) if len(ranked) > 1 else 1.0)
        running &= scores <= thresholds[-1]
    model.config.threshold = thresholds + [1.0]
    model.save_pretrained(directory)
    image_processor(16, MEAN, STD).save_pretrained(directory)
    return model


def expected(model: torch.nn.Module, seeds) -> tuple[list[int], list[int]]:
    """Labels and exit layers of the model's own batched early exit on the uploads, prepared as the server does."""
    preprocessor = ImagePreprocessor(16, MEAN, STD)
    with torch.no_grad():
        output = model(torch.stack([preprocessor(png(seed)) for seed in seeds]))
    return output.logits.argmax(-1).tolist(), output.exit_layer.tolist()


def start_server(arguments: list[str], timeout: float) -> tuple[subprocess.Popen, str]:
    """`python -m utils.serving ARGUMENTS` on a free port of 127.0.0.1, returned with its URL once `/health` answers
    200; a server that ends or stays unhealthy for `timeout` seconds fails the test with its output."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "utils.serving", *arguments, "--port", str(port)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"the server did not become healthy:\n{server.communicate()[0]}")
        time.sleep(0.2)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

"""Shared set-up of the serving tests: tiny models whose images spread over the exits, and pipelines that can be
held at a stage or made to fail."""

from __future__ import annotations

import threading

import torch
from analysis_helpers import tiny_model, tiny_swin
from decision_helpers import spread_logits, thresholds_away_from_scores

from models.criteria import State
from utils.serving.pipelines import StageOutput


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

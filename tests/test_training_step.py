"""A training step that never waits on the host, and one alternation per optimizer step.

On a GPU, reading a device value on the host (`.item()`, `int()`, `bool()` of a tensor) stops the host until the
device has caught up, and a tensor made from Python data is a copy from the host; either in every step keeps the GPU
waiting. A dispatch mode watching every operator of whole optimizer steps (forward, backward, clipping, optimizer)
finds neither, for every strategy of both stages on DeiT and Swin, in fp32 and bf16 autocast, with gradient
accumulation. (The logging steps read the logged values, by design; they are not watched.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_step_helpers import HostTraffic, WatchSteps, train

from models import (
    DeiTHighwayConfig,
    DeiTHighwayForImageClassification,
    SwinHighwayConfig,
    SwinHighwayForImageClassification,
)
from models.exiting import decide_from_logits

TINY_DEIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=16,
                 patch_size=4, num_labels=10)
TINY_SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 2], num_heads=[1, 2, 4], window_size=2,
                 num_labels=10)
LGVIT = dict(highway_type="LGViT", num_early_exits=3)
STRATEGIES = {  # name: configuration fields
    "base": dict(num_early_exits=0),
    **{strategy: dict(LGVIT, train_strategy=strategy)
       for strategy in ["normal", "weighted", "alternating", "alternating_weighted", "distillation"]},
    "stage2_distillation": dict(LGVIT, train_strategy="distillation", freeze_backbone=True),
    "distillation_LGViT": dict(LGVIT, train_strategy="distillation_LGViT", freeze_backbone=True),
}


def tiny_model(backbone: str, **fields) -> torch.nn.Module:
    torch.manual_seed(0)
    if backbone == "deit":
        return DeiTHighwayForImageClassification(DeiTHighwayConfig(**TINY_DEIT, **fields))
    if fields.get("num_early_exits") == 3:  # Swin counts exits per stage
        fields = dict(fields, num_early_exits=[1, 1, 1])
    return SwinHighwayForImageClassification(SwinHighwayConfig(**TINY_SWIN, **fields))


def test_the_watch_sees_host_reads_and_host_data() -> None:
    """The watch itself: it would catch the reads and copies the training step must not make."""
    device_value = torch.ones(3)
    with HostTraffic(exempt=set()) as traffic:
        bool(device_value.sum() > 0)
        int(device_value[0])
        device_value[device_value > 0] = 2.0
        torch.tensor([0.5, 0.25]).view(-1, 1, 1)
        device_value.new_tensor([7])
    assert len(traffic.reads) == 3 and len(traffic.from_host) == 3  # the assigned 2.0 comes from the host too
    assert all(__file__ in place for place in traffic.reads + traffic.from_host)


CASES = [("deit", strategy, "fp32") for strategy in STRATEGIES] + [
    ("deit", "alternating_weighted", "bf16"), ("deit", "distillation_LGViT", "bf16"),
    ("swin", "base", "fp32"), ("swin", "alternating_weighted", "fp32"), ("swin", "distillation_LGViT", "bf16")]


@pytest.mark.parametrize("backbone, strategy, precision", CASES)
def test_a_training_step_neither_reads_the_device_nor_copies_from_the_host(tmp_path: Path, backbone: str,
                                                                            strategy: str, precision: str) -> None:
    """Steps 2 and 3 of a run with two micro-batches per step (steps 0 and 1 may set things up once)."""
    watch = WatchSteps({2, 3})
    train(tiny_model(backbone, **STRATEGIES[strategy]), tmp_path, callbacks=(watch,), gradient_accumulation_steps=2,
          bf16=precision == "bf16")
    assert len(watch.modes) == 2
    for traffic in watch.modes:
        assert traffic.reads == [] and traffic.from_host == []


def test_the_alternating_strategies_alternate_once_per_optimizer_step(tmp_path: Path) -> None:
    """Three micro-batches a step: all three of a step take the same loss, even steps the final classifier alone;
    a plain training loop outside the Trainer alternates at every forward, as the original."""
    model = tiny_model("deit", **STRATEGIES["alternating_weighted"])
    phases = []
    model.register_forward_pre_hook(lambda module, inputs: phases.append(module.alternation_phase))
    train(model, tmp_path, gradient_accumulation_steps=3, max_steps=4)
    assert phases == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]

    model.alternation_phase = 0
    phases.clear()
    for _ in range(3):
        model(torch.randn(2, 3, 16, 16), labels=torch.tensor([1, 2]))
    assert phases == [0, 1, 0]


@pytest.mark.parametrize("backbone", ["deit", "swin"])
@pytest.mark.parametrize("strategy", [*STRATEGIES, "weighted_on_every_layer"])
def test_every_trainable_parameter_gets_a_gradient_in_both_phases(backbone: str, strategy: str) -> None:
    """What DDP without `find_unused_parameters` (the default here) needs: no trainable parameter is left out of
    the loss, in either alternation phase (a layer-weighted loss with an exit on every layer keeps the final
    classifier with weight 0)."""
    fields = STRATEGIES.get(strategy)
    if strategy == "weighted_on_every_layer":
        fields = (dict(highway_type="linear", num_early_exits=4, position_exits=[1, 2, 3, 4], train_strategy="weighted")
                  if backbone == "deit" else
                  dict(highway_type="linear", num_early_exits=[2, 3, 2], position_exits=[[1, 2], [1, 2, 3], [1, 2]],
                       train_strategy="weighted"))
    model = tiny_model(backbone, **fields).train()
    size = model.config.image_size
    for phase in (0, 1):
        model.zero_grad(set_to_none=True)
        model.alternation_phase = phase
        model(torch.randn(4, 3, size, size), labels=torch.tensor([0, 1, 2, 3])).loss.backward()
        missing = [name for name, parameter in model.named_parameters()
                   if parameter.requires_grad and parameter.grad is None]
        assert missing == []


@pytest.mark.parametrize("criterion", ["confidence", "entropy", "patience", "patient_and_confident"])
def test_deciding_the_exits_of_an_evaluation_batch_reads_nothing_on_the_host(criterion: str) -> None:
    """The evaluation decides every sample's exit from one pass's logits (`decide_from_logits`) without waiting for
    the device."""
    model = tiny_model("deit", **STRATEGIES["alternating_weighted"], exit_strategy=criterion).eval()
    config = model.config
    with torch.no_grad():
        outputs = model(torch.randn(8, 3, 16, 16), early_exit=False)
        with HostTraffic(exempt=set()) as traffic:
            decide_from_logits(config.exit_settings(), outputs.exit_logits, outputs.final_logits,
                               config.exit_positions(), config.num_blocks)
    assert traffic.reads == [] and traffic.from_host == []


def test_on_an_accelerator_batches_reach_the_device_without_blocking_the_host(monkeypatch) -> None:
    """accelerate's loader copies each batch to the device; on an accelerator it does so from pinned memory with
    `non_blocking`, unless the user gives an accelerator configuration of their own."""
    from utils.arguments import TrainingArguments

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    arguments = TrainingArguments(output_dir="unused", dataloader_num_workers=0)
    assert arguments.accelerator_config.non_blocking and arguments.dataloader_pin_memory
    own = TrainingArguments(output_dir="unused", dataloader_num_workers=0, accelerator_config={"non_blocking": False})
    assert not own.accelerator_config.non_blocking
    monkeypatch.undo()
    assert not TrainingArguments(output_dir="unused").accelerator_config.non_blocking  # CPU: nothing pinned

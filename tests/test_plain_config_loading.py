"""A plain transformers ViT/DeiT/Swin configuration or checkpoint is read as this project's model on purpose: the load
says so in one line of its own, and transformers' warning about another model type never appears."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

import models  # noqa: F401  (registers the Auto classes)
import run_classification
from models import DeiTHighwayConfig, DeiTHighwayForImageClassification, SwinHighwayForImageClassification
from tests.pipeline_helpers import run_args

TYPE_WARNING = "You are using a model of type"
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
             patch_size=4, num_labels=10)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def messages():
    """Every message of transformers' loggers and of ours during the test."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("transformers", "models")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler.messages
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("plain_config", [ViTConfig(**SMALL), DeiTConfig(**SMALL)], ids=["vit", "deit"])
def test_a_plain_config_file_reads_with_our_line_and_no_type_warning(tmp_path, messages, plain_config):
    plain_config.save_pretrained(tmp_path)
    config = DeiTHighwayConfig.from_pretrained(tmp_path, num_early_exits=0)
    assert config.model_type == "deit_highway"
    assert config.backbone == ("ViT" if plain_config.model_type == "vit" else "DeiT")
    assert not [message for message in messages if TYPE_WARNING in message]
    ours = [message for message in messages if "read as DeiTHighwayConfig" in message]
    assert len(ours) == 1 and f"plain transformers `{plain_config.model_type}`" in ours[0]


def test_a_plain_vit_and_swin_checkpoint_load_as_models_with_exits_without_the_warning(tmp_path, messages):
    vit = ViTForImageClassification(ViTConfig(**SMALL)).eval()
    vit.save_pretrained(tmp_path / "vit")
    ours = DeiTHighwayForImageClassification.from_pretrained(tmp_path / "vit", num_early_exits=1,
                                                             position_exits=[1], highway_type="linear").eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(images, early_exit=False).logits, vit(images).logits)
    swin = SwinForImageClassification(SwinConfig(image_size=16, patch_size=2, embed_dim=16, depths=[1, 1],
                                                 num_heads=[1, 2], window_size=2, num_labels=3))
    swin.save_pretrained(tmp_path / "swin")
    assert isinstance(AutoModelForImageClassification.from_pretrained(tmp_path / "swin"), SwinForImageClassification)
    loaded = SwinHighwayForImageClassification.from_pretrained(tmp_path / "swin", num_early_exits=[0, 0])
    assert loaded.config.model_type == "swin_highway"
    assert not [message for message in messages if TYPE_WARNING in message]
    assert sum("read as" in message for message in messages) == 2


def test_a_run_from_the_paper_vit_config_logs_no_type_warning(tmp_path, messages):
    """`--config_name` with a plain `vit` configuration, as `configs/paper/models/vit-base-patch16-224.json`."""
    plain = ViTConfig(**SMALL)
    plain.save_pretrained(tmp_path / "config")
    run_classification.main(run_args(tmp_path / "run", config_name=str(tmp_path / "config" / "config.json"),
                                     num_early_exits=0, max_steps=1, max_eval_samples=8))
    assert not [message for message in messages if TYPE_WARNING in message]
    assert any("plain transformers `vit` configuration: read as DeiTHighwayConfig" in message
               for message in messages)

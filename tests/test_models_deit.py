"""Behaviour of the DeiT/ViT classifiers with exits on tiny random models (CPU, seconds)."""

import logging

import pytest
import torch
from transformers import AutoModelForImageClassification, DeiTConfig, ViTConfig, ViTForImageClassification
from transformers.models.deit.modeling_deit import DeiTForImageClassificationWithTeacher

from models import DeiTHighwayConfig, DeiTHighwayForImageClassification
from models.exiting import decide_from_logits

HEAD_TYPES = ["linear", "conv_normal", "conv1_1", "conv2_1", "attention_r1", "attention_r2", "self_attention", "vit",
              "LGViT"]
CRITERIA = ["entropy", "confidence", "patience", "patient_and_confident"]
BACKBONE_FIELDS = dict(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=48,
                       image_size=16, patch_size=4, num_labels=5)


def tiny_config(**fields) -> DeiTHighwayConfig:
    values = dict(BACKBONE_FIELDS, backbone="DeiT", highway_type="LGViT", num_early_exits=4)
    values.update(fields)
    return DeiTHighwayConfig(**values)


def tiny_model(seed: int = 0, **fields) -> DeiTHighwayForImageClassification:
    torch.manual_seed(seed)
    return DeiTHighwayForImageClassification(tiny_config(**fields))


def images(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def squared_gradient(parameters) -> float:
    """Sum of the squared gradients of `parameters` (0 for those without one)."""
    return sum(float(p.grad.pow(2).sum()) for p in parameters if p.grad is not None)


@pytest.mark.parametrize("backbone", ["ViT", "DeiT"])
@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_stage1_gradients_reach_every_head_the_final_classifiers_and_the_backbone(backbone, head_type):
    model = tiny_model(backbone=backbone, highway_type=head_type, position_exits=[2, 3, 4, 5]).train()
    assert model.config.train_strategy == "normal"
    outputs = model(images(), labels=torch.tensor([0, 1, 2, 3]))
    assert outputs.logits.shape == (4, 5) and torch.isfinite(outputs.loss)
    assert len(outputs.exit_logits) == 4
    outputs.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # Per head, not per parameter: some parameters legitimately get an exact zero (a key bias under softmax).
    assert [squared_gradient(head.parameters()) > 0 for head in model.exits] == [True] * 4
    assert all(squared_gradient(classifier.parameters()) > 0 for classifier in model.final_classifiers())
    backbone_model = model.backbone_model
    assert squared_gradient(backbone_model.embeddings.parameters()) > 0
    assert [squared_gradient(block.parameters()) > 0 for block in backbone_model.layers] == [True] * 6


@pytest.mark.parametrize("backbone", ["ViT", "DeiT"])
@pytest.mark.parametrize("strategy", ["distillation", "distillation_LGViT"])
def test_stage2_updates_only_the_exit_heads(backbone, strategy):
    model = tiny_model(backbone=backbone, train_strategy=strategy, freeze_backbone=True).train()
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("exits.")}
    heads = {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith("exits.")}
    # No weight decay: a head that got no gradient must not move.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    outputs = model(images(), labels=torch.tensor([0, 1, 2, 3]))
    outputs.loss.backward()
    assert all(p.grad is None and not p.requires_grad for name, p in model.named_parameters() if name in frozen)
    assert [squared_gradient(head.parameters()) > 0 for head in model.exits] == [True] * 4
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in frozen.items())
    changed_heads = {name.split(".")[1] for name, value in heads.items() if not torch.equal(after[name], value)}
    assert changed_heads == {str(i) for i in range(model.config.num_early_exits)}


def test_stage2_starts_from_a_stage1_checkpoint_by_a_config_change(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    model = DeiTHighwayForImageClassification.from_pretrained(tmp_path, train_strategy="distillation_LGViT")
    assert model.config.frozen_backbone
    assert not any(p.requires_grad for p in model.deit.parameters())
    assert all(p.requires_grad for p in model.exits.parameters())
    model.train()
    assert not model.deit.training and model.exits.training


@pytest.mark.parametrize("backbone", ["ViT", "DeiT"])
@pytest.mark.parametrize("criterion", CRITERIA)
def test_batched_decisions_equal_batch_size_one(backbone, criterion):
    model = tiny_model(backbone=backbone, highway_type="linear", num_early_exits=5, position_exits=[1, 2, 3, 4, 5])
    model.eval()
    pixel_values = images(16)
    with torch.no_grad():
        scores = model(pixel_values, early_exit=False)
    generator = torch.Generator().manual_seed(7)
    for _ in range(5):
        # Thresholds drawn around the observed scores so that samples leave at different exits.
        probabilities = torch.softmax(torch.stack(scores.exit_logits), dim=-1)
        if criterion == "confidence":
            values = probabilities.max(-1).values
        else:
            values = -(probabilities * probabilities.log()).sum(-1)
        low, high = values.min().item(), values.max().item()
        model.config.exit_strategy = criterion
        model.config.threshold = (low + (high - low) * torch.rand(5, generator=generator)).tolist()
        model.config.patience = int(torch.randint(1, 4, (), generator=generator))
        with torch.no_grad():
            batched = model(pixel_values)
            single = [model(pixel_values[i:i + 1]) for i in range(len(pixel_values))]
        assert batched.exit_layer.tolist() == [out.exit_layer.item() for out in single]
        torch.testing.assert_close(batched.logits, torch.cat([out.logits for out in single]), atol=1e-5,
                                   rtol=1e-4)
        # The same decisions from logits cached with every exit computed (what threshold sweeps use).
        offline = decide_from_logits(model.config.exit_settings(), list(scores.exit_logits),
                                     scores.final_logits, model.config.exit_positions(), model.config.num_blocks)
        assert offline.exit_layer.tolist() == batched.exit_layer.tolist()
        torch.testing.assert_close(offline.logits, batched.logits, atol=1e-5, rtol=1e-4)


def test_early_exit_false_computes_every_exit_for_the_whole_batch():
    model = tiny_model(exit_strategy="confidence", threshold=0.0).eval()
    with torch.no_grad():
        early = model(images())
        full = model(images(), early_exit=False)
    assert early.exit_layer.tolist() == [2] * 4 and early.exit_logits is None
    assert full.exit_layer.tolist() == [6] * 4 and len(full.exit_logits) == 4
    torch.testing.assert_close(early.logits, full.exit_logits[0])


def test_exit_settings_changes_take_effect_at_the_next_call():
    model = tiny_model(exit_strategy="confidence", threshold=1.0).eval()
    with torch.no_grad():
        assert model(images()).exit_layer.tolist() == [6] * 4
        model.config.threshold = 0.0
        assert model(images()).exit_layer.tolist() == [2] * 4


def test_save_and_load_round_trip_keeps_layout_and_thresholds(tmp_path):
    model = tiny_model(exit_strategy="patient_and_confident", threshold=[0.1, 0.2, 0.3, 0.4], patience=2).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DeiTHighwayForImageClassification)
    for field in ("highway_type", "num_early_exits", "exit_strategy", "threshold", "patience", "backbone"):
        assert getattr(loaded.config, field) == getattr(model.config, field)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images(), early_exit=False).exit_logits,
                                   model(images(), early_exit=False).exit_logits)


@pytest.mark.parametrize("kind", ["ViT", "DeiT"])
def test_plain_transformers_checkpoint_loads_as_backbone_and_final_classifier(tmp_path, kind, caplog):
    torch.manual_seed(0)
    if kind == "ViT":
        plain = ViTForImageClassification(ViTConfig(**BACKBONE_FIELDS))
    else:
        plain = DeiTForImageClassificationWithTeacher(DeiTConfig(**BACKBONE_FIELDS))
    plain.eval().save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = DeiTHighwayForImageClassification.from_pretrained(tmp_path, highway_type="LGViT",
                                                                  num_early_exits=4).eval()
    assert model.config.backbone == kind
    assert "exits.0" in caplog.text  # the log names the freshly initialised exit weights
    with torch.no_grad():
        expected = plain(images()).logits
        torch.testing.assert_close(model(images(), early_exit=False).final_logits, expected)


def test_new_label_count_needs_ignore_mismatched_sizes(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        DeiTHighwayForImageClassification.from_pretrained(tmp_path, num_labels=3)
    model = DeiTHighwayForImageClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    assert model.eval()(images()).logits.shape == (4, 3)


@pytest.mark.parametrize("fields,message", [
    (dict(highway_type="attention"), "highway_type"),
    (dict(highway_type="attention_r0"), "highway_type"),
    (dict(exit_strategy="gumbel_lte"), "exit_strategy"),
    (dict(train_strategy="two-stage"), "train_strategy"),
    (dict(backbone="Swin"), "backbone"),
    (dict(position_exits=[2, 3, 4]), "num_early_exits"),
    (dict(position_exits=[2, 2, 3, 4]), "repeats"),
    (dict(position_exits=[0, 2, 3, 4]), "between 1 and 6"),
    (dict(position_exits=[2, 3, 4, 7]), "between 1 and 6"),
    (dict(position_exits="[2,3,4"), "position_exits"),
    (dict(threshold=[0.5, 0.5]), "one value per exit"),
    (dict(exit_strategy="confidence", threshold=1.5), "between 0 and 1"),
    (dict(exit_strategy="entropy", threshold=-0.1), ">= 0"),
    (dict(exit_strategy="patience", patience=0), "patience"),
    (dict(num_early_exits=9), "num_early_exits"),
    (dict(highway_type="linear", train_strategy="distillation_LGViT"), "distillation_LGViT"),
    (dict(highway_type="attention_r5"), "at most 4"),
    (dict(freeze_backbone=True, train_strategy="weighted"), "freeze_backbone"),
    (dict(loss_coefficient=1.5), "loss_coefficient"),
])
def test_bad_configuration_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**fields)


def test_original_string_positions_are_accepted():
    assert tiny_config(position_exits="[1,3,4,6]").exit_positions() == [1, 3, 4, 6]


def test_default_positions_are_the_layers_before_the_last():
    assert tiny_config(num_early_exits=3).exit_positions() == [3, 4, 5]


# The rule for counts the original had no layout for: the shallow half local (conv1_1, then conv2_1), the deep half
# global (stride 2, then stride 3); an odd extra exit is global.
OTHER_LGVIT_LAYOUTS = {
    1: ["attention_r2"],
    3: ["conv1_1", "attention_r2", "attention_r3"],
    5: ["conv1_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3"],
    7: ["conv1_1", "conv1_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3", "attention_r3"],
    9: ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r2", "attention_r2", "attention_r2", "attention_r3",
        "attention_r3"],
}


@pytest.mark.parametrize("num_exits", sorted(OTHER_LGVIT_LAYOUTS))
def test_lgvit_rule_for_other_exit_counts(num_exits):
    config = DeiTHighwayConfig(**dict(BACKBONE_FIELDS, num_hidden_layers=12), highway_type="LGViT",
                               num_early_exits=num_exits)
    assert [spec.name for spec in config.head_specs()] == OTHER_LGVIT_LAYOUTS[num_exits]


@pytest.mark.parametrize("num_exits, layout", [
    (2, ["conv1_1", "attention_r2"]),
    (4, ["conv1_1", "conv2_1", "attention_r2", "attention_r3"]),
    (6, ["conv1_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3", "attention_r3"]),
    (8, ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3", "attention_r3"]),
])
def test_original_lgvit_layouts(num_exits, layout):
    """The original code's layouts (docs/original-code.md, "Exit heads"), on the default last exit positions."""
    config = DeiTHighwayConfig(**dict(BACKBONE_FIELDS, num_hidden_layers=12), highway_type="LGViT",
                               num_early_exits=num_exits)
    assert [spec.name for spec in config.head_specs()] == layout


def test_any_image_patch_and_width():
    model = DeiTHighwayForImageClassification(DeiTHighwayConfig(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=32, image_size=[24, 12],
        patch_size=4, num_labels=3, backbone="DeiT", highway_type="LGViT", num_early_exits=2)).eval()
    assert model.exits[1].layout.grid == (6, 3)
    outputs = model(torch.randn(2, 3, 24, 12), early_exit=False)
    assert outputs.exit_features[1].shape == (2, 3 * 2, 48)  # stride-2 sampling of a 6x3 grid: 3 rows, 2 columns

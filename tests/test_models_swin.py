"""Behaviour of the Swin classifier with exits on tiny random models (CPU, seconds)."""

import logging

import pytest
import torch
from transformers import AutoModelForImageClassification, SwinConfig, SwinForImageClassification

from models import SwinHighwayConfig, SwinHighwayForImageClassification
from models.feature_distillation import similarity_distillation

HEAD_TYPES = ["linear", "conv_normal", "conv1_1", "conv2_1", "attention_r1", "attention_r2", "self_attention", "vit",
              "LGViT"]
CRITERIA = ["entropy", "confidence", "patience", "patient_and_confident"]
# Three stages of 2, 3 and 2 blocks on 8x8, 4x4 and 2x2 grids, widths 16, 32, 64: 7 layers.
BACKBONE_FIELDS = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 3, 2], num_heads=[2, 2, 4], window_size=2,
                       mlp_ratio=2.0, drop_path_rate=0.1, num_labels=5)
LABELS = torch.tensor([0, 1, 2, 3])


def tiny_config(**fields) -> SwinHighwayConfig:
    values = dict(BACKBONE_FIELDS, highway_type="LGViT", num_early_exits=[1, 2, 1])
    values.update(fields)
    return SwinHighwayConfig(**values)


def tiny_model(seed: int = 0, **fields) -> SwinHighwayForImageClassification:
    torch.manual_seed(seed)
    return SwinHighwayForImageClassification(tiny_config(**fields))


def images(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_default_configuration_is_the_papers_swin_b_layout():
    config = SwinHighwayConfig(highway_type="LGViT")
    assert config.depths == [2, 2, 18, 2] and config.embed_dim == 128 and config.num_blocks == 24
    assert config.exit_positions() == [4, 7, 10, 13, 16, 19, 22, 23]
    assert [spec.name for spec in config.head_specs()] == ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r1",
                                                           "attention_r1", "attention_r2", "attention_r2"]
    assert config.exit_settings().thresholds == (0.75,) * 8  # the original Swin confidence default


def test_original_string_layout_is_accepted_and_converted_once():
    config = SwinHighwayConfig(num_early_exits="[0,1,6,1]", position_exits="[[],[2],[3,6,9,12,15,18],[1]]")
    assert config.num_early_exits == [0, 1, 6, 1] and config.position_exits[2] == [3, 6, 9, 12, 15, 18]
    assert config.exit_positions() == [4, 7, 10, 13, 16, 19, 22, 23]


def test_default_positions_and_stage_of_each_exit():
    config = tiny_config()
    assert config.stage_positions() == [[2], [2, 3], [1]]
    assert config.exit_positions() == [2, 4, 5, 6] and config.exit_stages() == [0, 1, 1, 2]


def squared_gradient(parameters) -> float:
    """Sum of the squared gradients of `parameters` (0 for those without one)."""
    return sum(float(p.grad.pow(2).sum()) for p in parameters if p.grad is not None)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_stage1_gradients_reach_every_head_the_final_classifier_and_the_backbone(head_type):
    model = tiny_model(highway_type=head_type).train()
    assert model.config.train_strategy == "normal"
    outputs = model(images(), labels=LABELS)
    assert outputs.logits.shape == (4, 5) and torch.isfinite(outputs.loss)
    assert [feature.shape[-1] for feature in outputs.exit_features] == [16, 32, 32, 64]
    outputs.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # Per head, not per parameter: some parameters legitimately get an exact zero (a key bias under softmax).
    assert [squared_gradient(head.parameters()) > 0 for head in model.exits] == [True] * 4
    assert squared_gradient(model.classifier.parameters()) > 0
    assert squared_gradient(model.swin.embeddings.parameters()) > 0
    blocks = [block for stage in model.swin.encoder.layers for block in stage.blocks]
    assert [squared_gradient(block.parameters()) > 0 for block in blocks] == [True] * 7


def test_exit_reads_the_block_output_before_patch_merging():
    model = tiny_model(highway_type="linear").eval()
    pixel_values = images()
    with torch.no_grad():
        outputs = model(pixel_values, early_exit=False)
        hidden = model.embed(pixel_values)
        for index in range(2):  # stage 1: blocks 1 and 2, then patch merging
            tapped, hidden = model.run_layer(index, hidden)
    assert tapped.shape == (4, 64, 16) and hidden.shape == (4, 16, 32)
    torch.testing.assert_close(outputs.exit_logits[0], model.exits[0](tapped)[0])


def test_final_prediction_is_transformers_swin_head(tmp_path):
    model = tiny_model().eval()
    plain = SwinForImageClassification(SwinConfig(**BACKBONE_FIELDS)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if k.startswith(("swin.", "classifier."))}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(images(), early_exit=False).final_logits, plain(images()).logits)


@pytest.mark.parametrize("strategy", ["distillation", "distillation_LGViT"])
def test_stage2_updates_only_the_exit_heads(strategy):
    model = tiny_model(train_strategy=strategy, freeze_backbone=True).train()
    assert not model.swin.training
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("exits.")}
    heads = {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith("exits.")}
    assert any(name.startswith("classifier.") for name in frozen)
    # No weight decay: a head that got no gradient must not move.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    outputs = model(images(), labels=LABELS)
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert all(p.grad is None and not p.requires_grad for name, p in model.named_parameters() if name in frozen)
    assert [squared_gradient(head.parameters()) > 0 for head in model.exits] == [True] * 4
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in frozen.items())
    changed_heads = {name.split(".")[1] for name, value in heads.items() if not torch.equal(after[name], value)}
    assert changed_heads == {str(i) for i in range(model.config.num_exits)}


def test_stage2_starts_from_a_stage1_checkpoint_by_a_config_change(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    model = SwinHighwayForImageClassification.from_pretrained(tmp_path, train_strategy="distillation_LGViT")
    assert model.config.frozen_backbone
    assert not any(p.requires_grad for p in model.swin.parameters()) and not model.classifier.weight.requires_grad
    assert all(p.requires_grad for p in model.exits.parameters())


def test_similarity_distillation_compares_any_widths():
    student = torch.randn(6, 16)
    rotation = torch.linalg.qr(torch.randn(64, 64)).Q[:, :16]  # an isometry from 16 into 64 channels
    assert similarity_distillation(student, 3.0 * student @ rotation.T).item() == pytest.approx(0.0, abs=1e-6)
    assert similarity_distillation(student, torch.randn(6, 64)).item() > 1e-3


@pytest.mark.parametrize("criterion", CRITERIA)
def test_batched_decisions_equal_batch_size_one(criterion):
    model = tiny_model(highway_type="linear", num_early_exits=[2, 3, 1], drop_path_rate=0.0).eval()
    pixel_values = images(12)
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
        model.config.threshold = (low + (high - low) * torch.rand(6, generator=generator)).tolist()
        model.config.patience = int(torch.randint(1, 4, (), generator=generator))
        with torch.no_grad():
            batched = model(pixel_values)
            single = [model(pixel_values[i:i + 1]) for i in range(len(pixel_values))]
        assert batched.exit_layer.tolist() == [out.exit_layer.item() for out in single]
        torch.testing.assert_close(batched.logits, torch.cat([out.logits for out in single]), atol=1e-5,
                                   rtol=1e-4)


def test_exit_layers_are_global_and_1_based():
    model = tiny_model(exit_strategy="confidence", threshold=0.0).eval()
    with torch.no_grad():
        assert model(images()).exit_layer.tolist() == [2] * 4
        model.config.threshold = 1.0
        assert model(images()).exit_layer.tolist() == [7] * 4


@pytest.mark.parametrize("head_type", ["LGViT", "self_attention", "vit"])
def test_save_and_load_round_trip(tmp_path, head_type):
    model = tiny_model(highway_type=head_type, exit_strategy="patient_and_confident", threshold=[0.1, 0.2, 0.3, 0.4],
                       patience=2).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SwinHighwayForImageClassification)
    for field in ("highway_type", "num_early_exits", "position_exits", "exit_strategy", "threshold", "patience",
                  "depths", "embed_dim"):
        assert getattr(loaded.config, field) == getattr(model.config, field)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys() and all(torch.equal(state[k], loaded_state[k]) for k in state)


def test_plain_transformers_swin_checkpoint_loads_as_backbone_and_classifier(tmp_path, caplog):
    torch.manual_seed(0)
    plain = SwinForImageClassification(SwinConfig(**BACKBONE_FIELDS)).eval()
    plain.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = SwinHighwayForImageClassification.from_pretrained(
            tmp_path, highway_type="LGViT", num_early_exits=[1, 2, 1], position_exits=[[2], [1, 3], [1]]).eval()
    assert "exits.0" in caplog.text  # the log names the freshly initialised exit weights
    assert model.config.exit_positions() == [2, 3, 5, 6]
    with torch.no_grad():
        torch.testing.assert_close(model(images(), early_exit=False).final_logits, plain(images()).logits)


def test_zero_exits_make_a_plain_swin_classifier():
    model = tiny_model(num_early_exits=0).eval()
    assert model.config.num_early_exits == [0, 0, 0] and len(model.exits) == 0
    plain = SwinForImageClassification(SwinConfig(**BACKBONE_FIELDS)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert set(plain.state_dict()) <= set(model.state_dict())
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in plain.state_dict().items())
    with torch.no_grad():
        outputs = model(images())
        expected = plain(images()).logits
    assert outputs.exit_layer.tolist() == [7] * 4
    torch.testing.assert_close(outputs.logits, expected)


def test_images_of_another_size_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        tiny_model().eval()(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("fields,message", [
    (dict(num_early_exits=[1, 2]), "one exit count per stage"),
    (dict(num_early_exits=4), "per stage"),
    (dict(backbone="ViT"), "backbone"),
    (dict(num_early_exits="[1,2,1"), "num_early_exits"),
    (dict(num_early_exits=[3, 0, 0]), "do not fit stage 1"),
    (dict(position_exits=[[2], [1, 3]]), "one list per stage"),
    (dict(position_exits=[[3], [1, 3], [1]]), "stage 1 has only 2 blocks"),
    (dict(position_exits=[[2], [1, 4], [1]]), "stage 2 has only 3 blocks"),
    (dict(position_exits=[[2], [1], [1]]), "num_early_exits"),
    (dict(position_exits=[[2], [3, 1], [1]]), "increasing"),
    (dict(highway_type="attention_r3", num_early_exits=[0, 0, 1]), "only 2x2"),
    (dict(highway_type="attention_r5"), "at most 4"),
    (dict(highway_type="attention"), "highway_type"),
    (dict(embed_dim=12, highway_type="attention_r1"), "multiple of 8"),
    (dict(exit_strategy="gumbel_lte"), "exit_strategy"),
    (dict(train_strategy="two-stage"), "train_strategy"),
    (dict(threshold=[0.5, 0.5]), "one value per exit"),
    (dict(exit_strategy="confidence", threshold=1.5), "between 0 and 1"),
    (dict(exit_strategy="patience", patience=0), "patience"),
    (dict(highway_type="linear", train_strategy="distillation_LGViT"), "distillation_LGViT"),
    (dict(freeze_backbone=True, train_strategy="weighted"), "freeze_backbone"),
    (dict(loss_coefficient=1.5), "loss_coefficient"),
])
def test_bad_configuration_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**fields)


# The DeiT rule with every global stride one smaller (Swin's deep grids are small).
OTHER_LGVIT_LAYOUTS = {
    1: ["attention_r1"],
    3: ["conv1_1", "attention_r1", "attention_r2"],
    5: ["conv1_1", "conv2_1", "attention_r1", "attention_r1", "attention_r2"],
    7: ["conv1_1", "conv1_1", "conv2_1", "attention_r1", "attention_r1", "attention_r2", "attention_r2"],
    9: ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r1", "attention_r1", "attention_r1", "attention_r2",
        "attention_r2"],
}


@pytest.mark.parametrize("num_exits", sorted(OTHER_LGVIT_LAYOUTS))
def test_lgvit_rule_for_other_exit_counts(num_exits):
    config = SwinHighwayConfig(highway_type="LGViT", num_early_exits=[0, 1, num_exits - 1, 0])
    assert [spec.name for spec in config.head_specs()] == OTHER_LGVIT_LAYOUTS[num_exits]

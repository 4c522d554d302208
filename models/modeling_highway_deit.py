"""DeiT and ViT image classifiers with early exits, built on transformers' own DeiT/ViT modules.

The backbone is transformers' `ViTModel` (backbone "ViT") or `DeiTModel` (backbone "DeiT"), stored under the same
attribute name as in transformers' classifiers (`vit` / `deit`), next to the same final classifier names
(`classifier` / `cls_classifier` + `distillation_classifier`). A plain transformers ViT or DeiT classification
checkpoint therefore loads as backbone plus final classifier, and only the exit heads are new.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, ViTModel
from transformers import initialization as init
from transformers.models.deit.modeling_deit import DeiTEmbeddings, DeiTModel
from transformers.models.vit.modeling_vit import ViTEmbeddings

from .configuration_highway_deit import DeiTHighwayConfig
from .early_exit_model import EarlyExitMixin
from .heads import build_exit_head


class DeiTHighwayPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading settings shared with transformers' DeiT/ViT models."""

    config: DeiTHighwayConfig
    config_class = DeiTHighwayConfig
    base_model_prefix = "deit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["DeiTEmbeddings", "ViTEmbeddings", "DeiTLayer", "ViTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Checkpoints saved before the alternation phase left the state dict hold its old counter; it is not needed.
    _keys_to_ignore_on_load_unexpected = [r"^training_forwards$"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Generic init for linear, conv and norm layers; truncated normal for the learned tokens."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (DeiTEmbeddings, ViTEmbeddings)):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if isinstance(module, DeiTEmbeddings):
                init.trunc_normal_(module.distillation_token, mean=0.0, std=std)


class DeiTHighwayForImageClassification(EarlyExitMixin, DeiTHighwayPreTrainedModel):
    """DeiT/ViT classifier with early-exit heads after chosen blocks.

    Differences from transformers' `ViTForImageClassification` / `DeiTForImageClassificationWithTeacher`:
    - blocks run one at a time so exits can read them and samples can leave early (per sample, any batch size);
    - the DeiT variant computes a loss (cross-entropy on the mean of its two classifiers, as the original);
    - exit heads in `exits`, configured by `DeiTHighwayConfig`.
    """

    def __init__(self, config: DeiTHighwayConfig):
        super().__init__(config)
        config.check()
        if config.backbone == "ViT":
            self.vit = ViTModel(config, add_pooling_layer=False)
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        else:
            self.deit = DeiTModel(config, add_pooling_layer=False)
            self.cls_classifier = nn.Linear(config.hidden_size, config.num_labels)
            self.distillation_classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.exits = nn.ModuleList(
            build_exit_head(spec, layout, config.num_labels, config.num_attention_heads, config.intermediate_size,
                            config.layer_norm_eps)
            for spec, layout in zip(config.head_specs(), config.exit_token_layouts())
        )
        self.post_init()
        self.apply_freezing()

    @property
    def backbone_model(self) -> ViTModel | DeiTModel:
        return self.vit if self.config.backbone == "ViT" else self.deit

    def final_classifiers(self) -> list[nn.Linear]:
        if self.config.backbone == "ViT":
            return [self.classifier]
        return [self.cls_classifier, self.distillation_classifier]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.backbone_model, *self.final_classifiers()]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.backbone_model.embeddings
        return embeddings(pixel_values.to(embeddings.patch_embeddings.projection.weight.dtype))

    def run_layer(self, index: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.backbone_model.layers[index](hidden)
        return hidden, hidden

    def final_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm, then the cls classifier (ViT) or the mean of the cls and distillation ones (DeiT)."""
        normed = self.backbone_model.layernorm(hidden)
        logits = [classifier(normed[:, i]) for i, classifier in enumerate(self.final_classifiers())]
        return torch.stack(logits).mean(0)

    def teacher_tokens(self, hidden: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return hidden[:, self.config.num_prefix_tokens:], self.config.patch_grid

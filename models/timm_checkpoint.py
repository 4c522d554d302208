"""timm models as backbones: the configuration and weights of a timm ViT, DeiT (plain or distilled) or Swin in this
project's names, so timm's pretrained weights can start stage 0 or stage 1 (`EarlyExitMixin.from_timm`).

Supported: timm's `VisionTransformer` with a class token and token pooling (vit_*, deit_* without distillation:
backbone "ViT"), `VisionTransformerDistilled` (deit_*_distilled_*: backbone "DeiT") and `SwinTransformer` (swin_*),
in their standard form (no register tokens, layer scale, qk-norm or extra norms). Anything else stops with an error
that says what differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .early_exit_config import as_pair


def load_timm_model(model_or_name: nn.Module | str) -> nn.Module:
    """A timm model object as given, or created by name with its pretrained weights (needs the HuggingFace Hub)."""
    if isinstance(model_or_name, nn.Module):
        return model_or_name
    import timm

    try:
        return timm.create_model(model_or_name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"Could not create timm model {model_or_name!r} with pretrained weights ({error}). Offline, create it "
            f"yourself (timm.create_model(name, pretrained_cfg_overlay=dict(file=...)) with a local weights file) "
            f"and pass the model object."
        ) from error


def _require(condition: bool, model: nn.Module, what: str) -> None:
    if not condition:
        raise ValueError(f"timm model {type(model).__name__} {what}; only the standard ViT, DeiT and Swin map onto "
                         "this project's classes.")


def _is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _timm_kind(model: nn.Module) -> str:
    name = type(model).__name__
    _require(name in ("VisionTransformer", "VisionTransformerDistilled", "SwinTransformer"), model,
             "is not a VisionTransformer, VisionTransformerDistilled or SwinTransformer")
    return {"VisionTransformer": "ViT", "VisionTransformerDistilled": "DeiT", "SwinTransformer": "Swin"}[name]


def config_fields_from_timm(model: nn.Module) -> dict[str, Any]:
    """This project's configuration fields (with `model_type`) for a timm model's backbone and classifier."""
    kind = _timm_kind(model)
    num_labels = model.num_classes
    if kind == "Swin":
        layers = list(model.layers)
        block = layers[0].blocks[0]
        return {
            "model_type": "swin_highway", "image_size": list(as_pair(model.patch_embed.img_size)),
            "patch_size": as_pair(model.patch_embed.patch_size)[0], "num_channels": model.patch_embed.proj.in_channels,
            "embed_dim": model.embed_dim, "depths": [len(layer.blocks) for layer in layers],
            "num_heads": [layer.blocks[0].attn.num_heads for layer in layers],
            "window_size": as_pair(block.window_size)[0],
            "mlp_ratio": block.mlp.fc1.out_features / block.mlp.fc1.in_features,
            "qkv_bias": block.attn.qkv.bias is not None, "layer_norm_eps": block.norm1.eps,
            "hidden_act": "gelu", "num_labels": num_labels,
        }
    _require(model.cls_token is not None and model.global_pool == "token", model, "does not pool its class token")
    _require(getattr(model, "num_reg_tokens", 0) == 0 and not getattr(model, "no_embed_class", False), model,
             "has register tokens or position embeddings without the class token")
    _require(all(_is_identity(getattr(model, name, None)) for name in ("norm_pre", "fc_norm")), model,
             "has extra norms (norm_pre or fc_norm)")
    block = model.blocks[0]
    _require(all(_is_identity(getattr(block, name, None)) for name in ("ls1", "ls2")), model, "has layer scale")
    _require(all(_is_identity(getattr(block.attn, name, None)) for name in ("q_norm", "k_norm")), model, "has qk-norm")
    return {
        "model_type": "deit_highway", "backbone": kind, "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.blocks), "num_attention_heads": block.attn.num_heads,
        "intermediate_size": block.mlp.fc1.out_features, "hidden_act": "gelu",
        "image_size": list(as_pair(model.patch_embed.img_size)), "patch_size": as_pair(model.patch_embed.patch_size)[0],
        "num_channels": model.patch_embed.proj.in_channels, "qkv_bias": block.attn.qkv.bias is not None,
        "layer_norm_eps": block.norm1.eps, "num_labels": num_labels,
    }


def _split_qkv(prefix: str, weights: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """timm's fused qkv projection as separate q_proj, k_proj, v_proj under `prefix`."""
    out = {}
    for kind in ("weight", "bias"):
        if f"{source}.{kind}" in weights:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), weights[f"{source}.{kind}"].chunk(3, dim=0)):
                out[f"{prefix}.{name}.{kind}"] = part
    return out


def _block(prefix: str, source: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One transformer block: norms, attention (fused qkv split), MLP."""
    out = _split_qkv(f"{prefix}.attention", weights, f"{source}.attn.qkv")
    renames = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for old, new in renames.items():
        for kind in ("weight", "bias"):
            if f"{source}.{old}.{kind}" in weights:
                out[f"{prefix}.{new}.{kind}"] = weights[f"{source}.{old}.{kind}"]
    return out


def state_dict_from_timm(model: nn.Module) -> dict[str, torch.Tensor]:
    """The timm model's backbone and classifier weights under this project's names (no exit heads)."""
    kind, weights = _timm_kind(model), model.state_dict()
    out: dict[str, torch.Tensor] = {}
    if kind == "Swin":
        out["swin.embeddings.patch_embeddings.projection.weight"] = weights["patch_embed.proj.weight"]
        out["swin.embeddings.patch_embeddings.projection.bias"] = weights["patch_embed.proj.bias"]
        out["swin.embeddings.norm.weight"] = weights["patch_embed.norm.weight"]
        out["swin.embeddings.norm.bias"] = weights["patch_embed.norm.bias"]
        for stage, layer in enumerate(model.layers):
            for index in range(len(layer.blocks)):
                prefix, source = f"swin.encoder.layers.{stage}.blocks.{index}", f"layers.{stage}.blocks.{index}"
                out.update(_block(prefix, source, weights))
                out[f"{prefix}.attention.relative_position_bias.relative_position_bias_table"] = weights[
                    f"{source}.attn.relative_position_bias_table"]
            # timm merges patches at the start of the next stage, transformers at the end of this one.
            if stage + 1 < len(model.layers):
                for name in ("reduction.weight", "norm.weight", "norm.bias"):
                    out[f"swin.encoder.layers.{stage}.downsample.{name}"] = weights[
                        f"layers.{stage + 1}.downsample.{name}"]
        out["swin.layernorm.weight"], out["swin.layernorm.bias"] = weights["norm.weight"], weights["norm.bias"]
        out["classifier.weight"], out["classifier.bias"] = weights["head.fc.weight"], weights["head.fc.bias"]
        return out
    backbone = "vit" if kind == "ViT" else "deit"
    out[f"{backbone}.embeddings.cls_token"] = weights["cls_token"]
    out[f"{backbone}.embeddings.position_embeddings"] = weights["pos_embed"]
    out[f"{backbone}.embeddings.patch_embeddings.projection.weight"] = weights["patch_embed.proj.weight"]
    out[f"{backbone}.embeddings.patch_embeddings.projection.bias"] = weights["patch_embed.proj.bias"]
    for index in range(len(model.blocks)):
        out.update(_block(f"{backbone}.layers.{index}", f"blocks.{index}", weights))
    out[f"{backbone}.layernorm.weight"] = weights["norm.weight"]
    out[f"{backbone}.layernorm.bias"] = weights["norm.bias"]
    if kind == "ViT":
        out["classifier.weight"], out["classifier.bias"] = weights["head.weight"], weights["head.bias"]
    else:
        out["deit.embeddings.distillation_token"] = weights["dist_token"]
        out["cls_classifier.weight"], out["cls_classifier.bias"] = weights["head.weight"], weights["head.bias"]
        out["distillation_classifier.weight"] = weights["head_dist.weight"]
        out["distillation_classifier.bias"] = weights["head_dist.bias"]
    return out

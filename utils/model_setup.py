"""Building the config and model of a run: the checkpoint's settings, the dataset's labels, the CLI overrides."""

from __future__ import annotations

import logging
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from models import (
    DeiTHighwayConfig,
    DeiTHighwayForImageClassification,
    SwinHighwayConfig,
    SwinHighwayForImageClassification,
)

from .arguments import ModelArguments

logger = logging.getLogger(__name__)

# model_type of the source config -> (config class, model class). Plain transformers checkpoints load into the
# classes with exits (their exit heads start fresh).
MODEL_CLASSES = {
    "deit": (DeiTHighwayConfig, DeiTHighwayForImageClassification),
    "vit": (DeiTHighwayConfig, DeiTHighwayForImageClassification),
    "deit_highway": (DeiTHighwayConfig, DeiTHighwayForImageClassification),
    "swin": (SwinHighwayConfig, SwinHighwayForImageClassification),
    "swin_highway": (SwinHighwayConfig, SwinHighwayForImageClassification),
}


def hub_kwargs(model_args: ModelArguments) -> dict[str, Any]:
    return {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}


def read_config_dict(source: str, model_args: ModelArguments) -> dict[str, Any]:
    """The raw config (JSON file, directory or hub id) as a dict."""
    config_dict, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs(model_args))
    return config_dict


def model_classes(config_dict: dict[str, Any]) -> tuple[type[PretrainedConfig], type[PreTrainedModel]]:
    model_type = config_dict.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type {model_type!r} is not supported; expected one of {sorted(MODEL_CLASSES)}.")
    return MODEL_CLASSES[model_type]


def check_label_count(model_args: ModelArguments, labels: list[str]) -> None:
    """Refuse a checkpoint whose classifier has another class count, unless its heads may be re-initialised."""
    if model_args.model_name_or_path is None:
        return
    checkpoint = read_config_dict(model_args.model_name_or_path, model_args)
    count = len(checkpoint.get("id2label") or {}) or checkpoint.get("num_labels", 2)
    if count != len(labels) and not model_args.ignore_mismatched_sizes:
        raise ValueError(
            f"{model_args.model_name_or_path} classifies {count} classes but the dataset has {len(labels)}. "
            f"Pass --ignore_mismatched_sizes True to start new classifier heads for this dataset (fine-tuning), or "
            f"evaluate a checkpoint trained on this dataset."
        )
    names = {str(k): v for k, v in (checkpoint.get("id2label") or {}).items()}
    if count == len(labels) and names and [names.get(str(i)) for i in range(count)] != list(labels):
        logger.warning("The checkpoint's class names differ from the dataset's; using the dataset's (%s...).",
                       labels[:5])


def load_config(model_args: ModelArguments, labels: list[str]) -> PretrainedConfig:
    """Config from --config_name or the checkpoint, with the dataset's labels and the early-exit overrides."""
    source = model_args.config_name or model_args.model_name_or_path
    config_class, _ = model_classes(read_config_dict(source, model_args))
    overrides = model_args.config_overrides()
    if overrides:
        logger.info("Config overrides: %s", overrides)
    return config_class.from_pretrained(
        source,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **overrides,
        **hub_kwargs(model_args),
    )


def load_model(model_args: ModelArguments, config: PretrainedConfig) -> PreTrainedModel:
    """Weights from --model_name_or_path (exit heads it lacks start fresh), or a new model from the config."""
    model_class = MODEL_CLASSES[config.model_type][1]
    if model_args.model_name_or_path is None:
        logger.info("Training a new %s from scratch.", model_class.__name__)
        return model_class(config)
    return model_class.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **hub_kwargs(model_args),
    )


def num_layers(config: PretrainedConfig) -> int:
    """Backbone depth in blocks: the full depth is the `exit_layer` of the final classifier."""
    depths = getattr(config, "depths", None)
    return int(sum(depths)) if depths else int(config.num_hidden_layers)

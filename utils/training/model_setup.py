"""Building the config and model of a run: the checkpoint's settings, the dataset's labels, the CLI overrides."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from models import (
    DeiTHighwayConfig,
    DeiTHighwayForImageClassification,
    SwinHighwayConfig,
    SwinHighwayForImageClassification,
)
from utils.arguments import ModelArguments

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


# --model_type without a checkpoint or config: the paper's architectures, shipped as configs (no hub needed).
PAPER_MODELS = Path(__file__).resolve().parents[2] / "configs" / "paper" / "models"
PAPER_CONFIGS = {
    "vit": PAPER_MODELS / "vit-base-patch16-224.json",
    "deit": PAPER_MODELS / "deit-base-distilled-patch16-224.json",
    "swin": PAPER_MODELS / "swin-base-patch4-window7-224.json",
}


def hub_kwargs(model_args: ModelArguments) -> dict[str, Any]:
    return {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}


def read_config_dict(source: str, model_args: ModelArguments) -> dict[str, Any]:
    """The raw config (JSON file, directory or hub id) as a dict."""
    config_dict, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs(model_args))
    return config_dict


def architecture(config_dict: dict[str, Any]) -> str:
    """The paper's architecture a config describes, as `--model_type` names it: vit, deit or swin (a config with
    exits says ViT or DeiT in its `backbone` field, a plain transformers config in its model_type)."""
    model_type = config_dict.get("model_type")
    if model_type == "deit_highway":
        return str(config_dict.get("backbone", DeiTHighwayConfig.backbone)).lower()
    return "swin" if model_type == "swin_highway" else str(model_type)


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


def config_source(model_args: ModelArguments) -> str:
    """Where the run's config comes from: the checkpoint, else --config_name, else the paper's --model_type."""
    if model_args.model_name_or_path is not None:
        if model_args.config_name not in (None, model_args.model_name_or_path):
            logger.warning("--config_name %s is ignored: the checkpoint %s brings its own configuration (exit layout "
                           "included).", model_args.config_name, model_args.model_name_or_path)
        return model_args.model_name_or_path
    if model_args.config_name is not None:
        return model_args.config_name
    if model_args.model_type not in PAPER_CONFIGS:
        raise ValueError(f"--model_type {model_args.model_type!r} has no paper configuration; use one of "
                         f"{', '.join(PAPER_CONFIGS)} or give --config_name.")
    return str(PAPER_CONFIGS[model_args.model_type])


def load_config(model_args: ModelArguments, labels: list[str]) -> PretrainedConfig:
    """Config from the checkpoint, --config_name or --model_type, with the dataset's labels and the early-exit
    overrides."""
    source = config_source(model_args)
    config_dict = read_config_dict(source, model_args)
    config_class, _ = model_classes(config_dict)
    if model_args.model_type is not None and model_args.model_type != architecture(config_dict):
        raise ValueError(f"--model_type {model_args.model_type} does not match {source}, a "
                         f"{architecture(config_dict)} model; drop --model_type or pick the matching checkpoint.")
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


def record_training_data(config: PretrainedConfig, split: dict[str, Any], started_from: str | None,
                         output_dir: str) -> None:
    """Append this training stage to the config's `training_data` (the stages of the checkpoint it starts from
    come first): its split record (`utils.data.provenance.split_record`), train strategy, output directory and
    starting checkpoint (None from scratch)."""
    stage = {"train_strategy": config.train_strategy, "num_exits": config.num_exits, "output_dir": output_dir,
             "started_from": started_from, **split}
    config.training_data = [*(config.training_data or []), stage]

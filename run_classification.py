#!/usr/bin/env python
"""Train and evaluate DeiT/ViT/Swin classifiers with early exits: every LGViT stage from one entry point.

- base fine-tuning: `--num_early_exits 0`;
- stage 1 (exits trained with the backbone): e.g. `--highway_type LGViT --num_early_exits 8
  --train_strategy alternating_weighted`;
- stage 2 (self-distillation, backbone frozen): `--model_name_or_path <stage-1 dir> --train_strategy
  distillation_LGViT`;
- evaluation only: `--do_train False --do_eval`; with `--sweep True` also every criterion's accuracy/speed-up curve
  and the figures, with `--measure_speedup True` the wall-clock speed-up, and with `--target_speedup` or
  `--max_accuracy_drop` (and `--calibration_split`) thresholds calibrated first and saved in the config; with
  `--risk_level` the accuracy budget is certified (docs/certified-thresholds.md).

Arguments come from the command line, or from JSON/YAML files (later ones override earlier ones) followed by
command-line overrides: `python run_classification.py configs/digits/stage1.yaml --output_dir outputs/x`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from datasets import DatasetDict
from transformers import PreTrainedModel, set_seed

from utils.analysis.calibration import Calibration
from utils.analysis.certification import record_certification
from utils.analysis.flops import FlopsProfile, profile_flops
from utils.analysis.metrics import build_compute_metrics
from utils.analysis.provenance import check_calibration_data
from utils.analysis.report import (
    ModelRuns,
    analyse_evaluation,
    apply_calibration,
    calibrate_to_budget,
    check_analysis_request,
)
from utils.arguments import (
    AnalysisArguments,
    DataTrainingArguments,
    ModelArguments,
    TrainingArguments,
    argument_files,
    parse_arguments,
)
from utils.data.image_dataset import ImageDataset, collate_fn, split_image_datasets
from utils.data.loading import label_names, load_datasets_with_record
from utils.data.transforms import (
    image_processor,
)
from utils.training.checkpoints import resume_checkpoint
from utils.training.environment import run_environment
from utils.training.logging_setup import configure_wandb, setup_logging
from utils.training.model_setup import check_label_count, load_config, load_model, record_training_data
from utils.training.requeue import REQUEUE_EXIT_CODE
from utils.training.trainer import ExitTrainer
from utils.training.wandb_run import run_labels, wandb_run

logger = logging.getLogger(__name__)


def main(args: list[str] | dict[str, Any] | None = None) -> dict[str, float]:
    """Run one stage; returns the evaluation metrics (empty without --do_eval)."""
    model_args, data_args, analysis_args, training_args = parse_arguments(args)
    setup_logging(training_args)
    configure_wandb(training_args.report_to)
    log_run(model_args, data_args, training_args)
    set_seed(training_args.seed)

    dataset, split = load_splits(data_args, training_args, model_args)
    labels = label_names(dataset)
    check_label_count(model_args, labels)
    config = load_config(model_args, labels)
    if training_args.do_train:
        record_training_data(config, split, model_args.model_name_or_path, training_args.output_dir)
    check_analysis_request(analysis_args, config.num_exits, data_args.calibration_split,
                           len(dataset["calibration"]) if "calibration" in dataset else None, config.exit_strategy)
    if analysis_args.calibrates:
        check_calibration_data(config.training_data, split)
    if training_args.check_only:
        logger.info("Arguments, data and model configuration checked (--check_only): nothing built or run.")
        return {}
    checkpoint = resume_checkpoint(training_args, config)
    model = load_model(model_args, config)
    flops = profile_flops(model)
    trainer, image_datasets = build_trainer(model, dataset, flops, model_args, data_args, training_args)
    trainer.every_exit_accuracy = analysis_args.every_exit_accuracy
    files = argument_files(args)
    with wandb_run(run_labels(config, data_args, training_args, files), training_args, files):
        return run_stage(trainer, image_datasets, flops, checkpoint, analysis_args)


def run_stage(trainer: ExitTrainer, image_datasets: dict[str, ImageDataset], flops: FlopsProfile,
              checkpoint: str | bool | None, analysis_args: AnalysisArguments) -> dict[str, float]:
    """Train, calibrate, evaluate and analyse, as the arguments ask; returns the evaluation metrics."""
    training_args = trainer.args
    if training_args.do_train:
        train(trainer, checkpoint)
    calibration = None
    if analysis_args.calibrates:
        calibration = calibrate_once(trainer, image_datasets["calibration"], flops, analysis_args)
        trainer.save_model()  # the config now holds the calibrated thresholds
    if not training_args.do_eval:
        return {}
    metrics = evaluate(trainer)
    if analysis_args.analyses and trainer.is_world_process_zero():
        analyse_evaluation(trainer.model, image_datasets["validation"], flops, analysis_args,
                           ModelRuns.of_trainer(trainer), training_args.output_dir, calibration, training_args.seed)
    return metrics


def calibrate_once(trainer: ExitTrainer, dataset: ImageDataset, flops: FlopsProfile,
                   analysis_args: AnalysisArguments) -> Calibration:
    """Calibrate on the main process, in the evaluation's precision; the other processes receive the result and
    apply it, so every process evaluates with the same thresholds (and exit temperatures)."""
    accelerator = trainer.accelerator
    calibration = None
    if accelerator.is_main_process:
        calibration = calibrate_to_budget(trainer.model, dataset, flops, analysis_args, ModelRuns.of_trainer(trainer))
        record_certification(trainer.args.output_dir, calibration)
    if accelerator.num_processes > 1:
        calibration = broadcast_object_list([calibration])[0]
        if not accelerator.is_main_process:
            apply_calibration(trainer.model, calibration)
            logger.info("Calibrated thresholds received from the main process.")
    return calibration


def log_run(model_args: ModelArguments, data_args: DataTrainingArguments, training_args: TrainingArguments) -> None:
    """What this run starts from and how it computes."""
    logger.debug("Training/evaluation parameters %s", training_args)
    logger.info("Model %s, data %s -> %s (seed %d)",
                model_args.model_name_or_path or model_args.config_name or model_args.model_type,
                data_args.dataset_name or data_args.train_dir or data_args.validation_dir, training_args.output_dir,
                training_args.seed)
    if training_args.precision_choice is not None:
        logger.info("Precision %s: %s.", training_args.precision_choice.name, training_args.precision_choice.reason)
    if training_args.batch_split is not None and training_args.do_train:
        logger.info("Batch: %s.", training_args.batch_split.describe())
        if training_args.batch_split.statistics_note() is not None:
            logger.info("Note: %s.", training_args.batch_split.statistics_note())
    logger.info("Data loading: %d worker process(es) per training process%s.", training_args.dataloader_num_workers,
                ", persistent" if training_args.dataloader_persistent_workers else "")


def load_splits(data_args: DataTrainingArguments, training_args: TrainingArguments,
                model_args: ModelArguments) -> tuple[DatasetDict, dict[str, Any] | None]:
    """The run's splits, checked against what it is asked to do, and the record of its train and calibration rows
    (`utils.data.provenance`)."""
    with training_args.main_process_first(desc="loading the dataset"):  # one download and cache per machine
        dataset, split = load_datasets_with_record(data_args, training_args.seed, model_args.cache_dir,
                                                   model_args.token)
    if training_args.do_train and "train" not in dataset:
        raise ValueError("--do_train needs a training split: give --train_dir or a dataset with a train split.")
    if training_args.do_eval and "validation" not in dataset:
        raise ValueError("--do_eval needs an evaluation split: give --validation_dir or a dataset with one.")
    return dataset, split


def build_trainer(model: PreTrainedModel, dataset: DatasetDict, flops: FlopsProfile, model_args: ModelArguments,
                  data_args: DataTrainingArguments,
                  training_args: TrainingArguments) -> tuple[ExitTrainer, dict[str, ImageDataset]]:
    """The Trainer over the transformed splits (training augmentation for `train`, evaluation transforms for the
    others); returns it with the image datasets by split."""
    config = model.config
    image_datasets, normalization = split_image_datasets(dataset, config.image_size, model_args, data_args,
                                                         training_args.seed)
    trainer = ExitTrainer(
        model=model,
        args=training_args,
        train_dataset=image_datasets.get("train") if training_args.do_train else None,
        eval_dataset=image_datasets.get("validation") if training_args.do_eval else None,
        data_collator=collate_fn,
        compute_metrics=build_compute_metrics(config.num_blocks, flops, config.exit_positions()),
        processing_class=image_processor(config.image_size, normalization.mean, normalization.std),
        normalization=normalization,
    )
    return trainer, image_datasets


def train(trainer: ExitTrainer, checkpoint: str | bool | None) -> None:
    """Train (resuming from `checkpoint` if given), then save the model, the metrics and the Trainer state. A run
    stopped by SIGUSR1/SIGTERM exits with REQUEUE_EXIT_CODE once its checkpoint is saved (utils.training.requeue)."""
    try:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        trainer.stop_on_signal.restore()
    if trainer.stop_on_signal.stopped:
        logger.warning("Training stopped on a signal at step %d; run the same command again to resume it.",
                       trainer.state.global_step)
        sys.exit(REQUEUE_EXIT_CODE)
    train_result.metrics["train_samples"] = len(trainer.train_dataset)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", {**train_result.metrics, "environment": run_environment()})
    trainer.save_state()


def evaluate(trainer: ExitTrainer) -> dict[str, float]:
    """Evaluate with per-sample early exit; log and save the metrics."""
    metrics = trainer.evaluate()
    metrics["eval_samples"] = len(trainer.eval_dataset)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", {**metrics, "environment": run_environment()})
    return metrics


def leave_process_group() -> None:
    """End a distributed run cleanly: once every process is done (a process that exits while another still
    writes the final model can abort on its open connections), leave the process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    leave_process_group()

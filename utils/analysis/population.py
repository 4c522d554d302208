"""Cache a trained model's logits on its calibration and evaluation splits: a known population for
`utils.analysis.risk_simulation`, the statistical test of certified thresholds.

The splits, their transforms and the model are those of a `run_classification.py` evaluation with the same
arguments (`--calibration_split` included, checked against the model's training records), and the logits are
`utils.analysis.sweep.collect_logits` over the calibration images, then the evaluation images. They are stored in
the format of `CachedLogits.save`, the logits in float32 as computed (float16 would move confidences near a threshold
across it, so an image could exit where the model's own run did not) and the labels as uint8 (`read_population` reads
them back as int64), and the model's FLOPs profile as the JSON of `FlopsProfile.to_dict` (`read_profile`).

Usage (from the repository root; after `--logits` and `--flops`, `run_classification.py`'s arguments):
    python -m utils.analysis.population --logits tests/fixtures/certification/digits_sdn_logits.pt \
        --flops tests/fixtures/certification/digits_sdn_flops.json configs/digits/eval.yaml \
        --model_name_or_path outputs/compare/ViT-digits/SDN/stage1 --calibration_split 0.2
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.analysis.flops import FlopsProfile, profile_flops
from utils.analysis.provenance import check_calibration_data
from utils.analysis.report import ModelRuns, cache_logits
from utils.analysis.sweep import CachedLogits
from utils.arguments import parse_arguments
from utils.data.image_dataset import split_image_datasets
from utils.data.loading import label_names, load_datasets_with_record
from utils.training.model_setup import load_config, load_model

logger = logging.getLogger(__name__)

SPLITS = ("calibration", "validation")


def collect_population(run_arguments: Sequence[str]) -> tuple[CachedLogits, FlopsProfile]:
    """Every exit's logits on the calibration split, then the evaluation split, of the run that
    `run_arguments` (`run_classification.py`'s arguments) describes, and the model's FLOPs profile."""
    model_args, data_args, _, training_args = parse_arguments(list(run_arguments))
    dataset, split = load_datasets_with_record(data_args, training_args.seed, model_args.cache_dir, model_args.token)
    missing = [name for name in SPLITS if name not in dataset]
    if missing:
        raise ValueError(f"The population needs the splits {SPLITS}; these arguments give no {missing} split "
                         "(pass --calibration_split, and a dataset with an evaluation split).")
    model = load_model(model_args, config := load_config(model_args, label_names(dataset)))
    check_calibration_data(config.training_data, split)
    image_datasets, _ = split_image_datasets(dataset, config.image_size, model_args, data_args, training_args.seed)
    runs = ModelRuns(training_args.per_device_eval_batch_size)
    caches = [cache_logits(model, image_datasets[name], runs) for name in SPLITS]
    population = CachedLogits(torch.cat([cache.exit_logits for cache in caches], dim=1),
                              torch.cat([cache.final_logits for cache in caches]),
                              torch.cat([cache.labels for cache in caches]), caches[0].exit_layers,
                              caches[0].num_blocks)
    logger.info("Population: %s images (%s).", len(population),
                ", ".join(f"{len(cache)} {name}" for name, cache in zip(SPLITS, caches)))
    return population, profile_flops(model)


def save_population(population: CachedLogits, profile: FlopsProfile, logits_path: str | Path,
                    flops_path: str | Path) -> None:
    """Write the logits (float32) with uint8 labels (`CachedLogits.save`) and the profile as JSON."""
    if int(population.labels.max()) > torch.iinfo(torch.uint8).max:
        raise ValueError("uint8 labels hold at most 256 classes; this population has more.")
    CachedLogits(population.exit_logits.float(), population.final_logits.float(), population.labels.to(torch.uint8),
                 population.exit_layers, population.num_blocks).save(logits_path)
    Path(flops_path).write_text(json.dumps(profile.to_dict()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.analysis.population", description=__doc__.split("\n\n")[0])
    parser.add_argument("--logits", required=True, help="where to write the cached logits (.pt)")
    parser.add_argument("--flops", required=True, help="where to write the FLOPs profile (.json)")
    parser.add_argument("run_arguments", nargs=argparse.REMAINDER,
                        help="run_classification.py's arguments (preset files, then flags), after the two above")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    save_population(*collect_population(args.run_arguments), args.logits, args.flops)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()

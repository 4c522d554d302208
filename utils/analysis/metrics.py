"""Accuracy and exit statistics of an evaluation.

Accuracy is scikit-learn's `accuracy_score`: it runs offline, whereas `evaluate.load("accuracy")` fetches its metric
script from the HuggingFace Hub at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from transformers import EvalPrediction

from models.loss_terms import classifier_names
from utils.analysis.flops import FlopsProfile


def accuracy(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Fraction of rows whose top logit is the label (nan for no rows)."""
    if len(labels) == 0:
        return float("nan")
    return float(accuracy_score(np.asarray(labels).reshape(-1), np.asarray(logits).argmax(axis=-1)))


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error of softmax(logits): the average over `bins` equal-width confidence bins of
    |accuracy - mean confidence|, weighted by the share of rows in each bin (0 for no rows)."""
    if len(labels) == 0:
        return 0.0
    confidence, prediction = torch.softmax(logits.double(), dim=-1).max(dim=-1)
    correct = (prediction == labels).double()
    # Bin b holds confidences in (b / bins, (b + 1) / bins]; confidences are > 0, so every row has a bin.
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1
    total = 0.0
    for index in range(bins):
        members = which == index
        if members.any():
            total += float(members.sum()) * abs(float(correct[members].mean() - confidence[members].mean()))
    return total / len(labels)


def exit_metrics(logits: np.ndarray, exit_layers: np.ndarray, labels: np.ndarray, num_blocks: int,
                 profile: FlopsProfile | None = None) -> dict[str, float]:
    """Accuracy and where the samples left the network.

    Args:
        logits: (N, K) the logits each sample left with.
        exit_layers: (N,) 1-based layer each sample left at; `num_blocks` means the final classifier answered.
        labels: (N,) class ids.
        num_blocks: depth of the backbone (12 for ViT/DeiT-B, 24 for Swin-B).
        profile: the model's FLOPs per part (`utils.analysis.flops.profile_flops`), for the speed-up that counts the
            heads.

    Returns:
        `accuracy`; `counts_exit_layer_n` for n = 1..num_blocks (samples that left at layer n);
        `average_exit_layer`; `speed-up` = num_blocks / average_exit_layer, the layer speed-up of the paper, which
        ignores the cost of the exit heads (named `layer_speedup` everywhere else; `speed-up` is the original
        code's name). With `profile` also `flops_speedup` = full-model FLOPs / average per-sample FLOPs with the
        exit heads run (also written as `flops_speed-up`, the name earlier releases of this project used, so their
        readers keep working), `average_gflops` and `exit_head_parameters`.
    """
    exit_layers = np.asarray(exit_layers).astype(np.int64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if exit_layers.min(initial=1) < 1 or exit_layers.max(initial=1) > num_blocks:
        raise ValueError(f"Exit layers must lie in 1..{num_blocks}; got {sorted(set(exit_layers.tolist()))}.")
    counts = np.bincount(exit_layers, minlength=num_blocks + 1)
    average = float(exit_layers.mean()) if exit_layers.size else float(num_blocks)
    metrics = {"accuracy": accuracy(logits, labels)}
    metrics.update({f"counts_exit_layer_{n}": int(counts[n]) for n in range(1, num_blocks + 1)})
    metrics["average_exit_layer"] = average
    metrics["speed-up"] = num_blocks / average
    if profile is not None and exit_layers.size:
        average_flops = profile.expected_flops(torch.from_numpy(exit_layers))
        metrics["flops_speedup"] = profile.full_model / average_flops
        metrics["flops_speed-up"] = metrics["flops_speedup"]
        metrics["average_gflops"] = average_flops / 1e9
        metrics["exit_head_parameters"] = profile.head_parameters
    return metrics


def exit_accuracies(exit_predictions: np.ndarray, labels: np.ndarray, exit_layers: Sequence[int],
                    num_blocks: int) -> dict[str, float]:
    """Each classifier's own accuracy on every sample: `accuracy_exit_<layer>` for every exit and for the final
    classifier (`models.loss_terms.classifier_names`: `exit_<num_blocks>`, or `final` when an exit reads the last
    layer).

    Args:
        exit_predictions: (N, exits + 1) the class every exit, then the final classifier, gives each sample.
    """
    names = classifier_names(exit_layers, num_blocks)
    exit_predictions = np.asarray(exit_predictions).reshape(len(labels), -1)
    if exit_predictions.shape[1] != len(names):
        raise ValueError(f"Per-exit predictions have {exit_predictions.shape[1]} columns, but exit layers "
                         f"{list(exit_layers)} give {len(names)} classifiers ({names}): pass the model's "
                         "`config.exit_positions()` as `exit_layers`.")
    labels = np.asarray(labels).reshape(-1)
    return {f"accuracy_{name}": float((exit_predictions[:, index] == labels).mean()) if len(labels) else float("nan")
            for index, name in enumerate(names)}


def build_compute_metrics(num_blocks: int, profile: FlopsProfile | None = None,
                          exit_layers: Sequence[int] = ()) -> Callable[[EvalPrediction], dict[str, float]]:
    """A Trainer `compute_metrics` reading the predictions of `ExitTrainer`: `(logits, exit_layer)`, and the
    per-exit predictions third when it computes them (then `exit_layers`, the model's, name the accuracies)."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits, exit_layer, *exit_predictions = prediction.predictions
        metrics = exit_metrics(logits, exit_layer, prediction.label_ids, num_blocks, profile)
        if exit_predictions:
            metrics.update(exit_accuracies(exit_predictions[0], prediction.label_ids, exit_layers, num_blocks))
        return metrics

    return compute_metrics

"""Helpers for comparing exit decisions between engines and precisions: models whose exits disagree enough to
spread samples over them, and thresholds that no score lies close to (so rounding cannot flip a decision)."""

from __future__ import annotations

import torch

from models.criteria import get_criterion


def _classifiers(module: torch.nn.Module, num_labels: int) -> list[torch.nn.Linear]:
    return [layer for layer in module.modules()
            if isinstance(layer, torch.nn.Linear) and layer.out_features == num_labels]


def spread_logits(model: torch.nn.Module, pixel_values: torch.Tensor, spread: float = 3.0) -> torch.nn.Module:
    """Scale every exit's classifiers (and the final ones) so that, on `pixel_values`, its logits vary by `spread`
    (standard deviation over the samples): a tiny random model's logits barely differ between samples, so its
    scores would all lie within rounding of each other."""
    num_labels = model.config.num_labels
    with torch.no_grad():
        outputs = model(pixel_values, early_exit=False)
        final_layers = [layer for layer in _classifiers(model, num_labels)
                        if not any(layer is other for head in model.exits for other in _classifiers(head, num_labels))]
        for layers, logits in [*zip((_classifiers(head, num_labels) for head in model.exits), outputs.exit_logits),
                               (final_layers, outputs.final_logits)]:
            factor = spread / (logits - logits.mean(0)).std().clamp_min(1e-12)
            for layer in layers:
                layer.weight.mul_(factor)
                layer.bias.mul_(factor)
    return model


def thresholds_away_from_scores(criterion_name: str, exit_logits: torch.Tensor, generator: torch.Generator,
                                margin: float) -> list[float]:
    """One threshold per exit, between two of that exit's scores (over `exit_logits` (E, B, K)) and at least
    `margin` away from every score. Raises if the scores leave no such gap."""
    criterion = get_criterion(criterion_name)
    if not criterion.uses_threshold:
        return [0.0] * exit_logits.shape[0]
    thresholds = []
    for logits in exit_logits:
        scores = criterion.score(logits).double().sort().values
        gaps = [(low + high) / 2 for low, high in zip(scores[:-1].tolist(), scores[1:].tolist())
                if high - low > 2 * margin]
        if not gaps:
            raise ValueError(f"No threshold {margin} away from every {criterion_name} score: {scores.tolist()}")
        thresholds.append(gaps[int(torch.randint(len(gaps), (), generator=generator))])
    return thresholds

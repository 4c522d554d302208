"""Temperature scaling per exit: one scalar T_e per exit head that divides its logits (Guo et al., "On Calibration of
Modern Neural Networks", ICML 2017), so that confidence and entropy mean the same at every exit.

T_e minimises the negative log-likelihood on images set apart for it, never the images that then choose or certify
the thresholds: the candidates stay fixed before those images are seen, so the certificate keeps its guarantee.
T_e is folded into the exit head's classifier layers (weights and bias divided by T_e), so the online early exit,
a saved checkpoint and an exported graph all use it with no new configuration field; the answers (argmax) do
not change, only the scores the exit criteria read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from scipy.optimize import minimize_scalar
from torch import nn

from utils.analysis.metrics import expected_calibration_error
from utils.analysis.sweep import CachedLogits

logger = logging.getLogger(__name__)

# log T is searched in [-LOG_T_LIMIT, LOG_T_LIMIT]: temperatures between ~0.02 and ~55.
LOG_T_LIMIT = 4.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 that minimises the mean negative log-likelihood of softmax(logits / T); 1 (no scaling)
    when every image is answered right (`fits`), where no temperature minimises it."""
    if not fits(logits, labels):
        return 1.0
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    return math.exp(minimize_scalar(nll, bounds=(-LOG_T_LIMIT, LOG_T_LIMIT), method="bounded").x)


def fits(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether a temperature can be fitted: with every image's label the strict top class, the likelihood keeps
    rising as T shrinks to 0, so a fit would run to the search's limit and make the exit claim certainty on every
    image (its confidence near 1 for wrong answers too, so no threshold could let them pass and the exit would be
    useless to certification). Such an exit keeps T = 1."""
    top2 = logits.topk(2, dim=-1).values
    right = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return not bool(((right == top2[:, 0]) & (top2[:, 0] > top2[:, 1])).all())


def temperature_samples(calibration_samples: int, fraction: float) -> int:
    """How many of the calibration images `--temperature_split` sets apart for fitting the temperatures."""
    return round(fraction * calibration_samples)


def fit_exit_temperatures(cache: CachedLogits) -> list[float]:
    """One temperature per exit, fitted on the cached images."""
    return [fit_temperature(logits, cache.labels) for logits in cache.exit_logits]


def classifier_layers(head: nn.Module) -> list[nn.Linear]:
    """The linear layers whose outputs an exit head sums or averages into its logits: modules called `classifier`
    or held in a `classifiers` list (`models.heads`)."""
    layers = []
    for name, module in head.named_modules():
        parts = name.split(".")
        if isinstance(module, nn.Linear) and (parts[-1] == "classifier" or parts[-2:-1] == ["classifiers"]):
            layers.append(module)
    return layers


def fold_temperatures(model: nn.Module, temperatures: Sequence[float]) -> None:
    """Divide each exit head's classifier weights and biases by its temperature, so its logits become logits / T."""
    if len(temperatures) != len(model.exits):
        raise ValueError(f"{len(temperatures)} temperatures for {len(model.exits)} exits.")
    with torch.no_grad():
        for index, (head, temperature) in enumerate(zip(model.exits, temperatures)):
            layers = classifier_layers(head)
            if not layers:
                raise ValueError(f"Exit head {index} ({type(head).__name__}) has no `classifier` layer to fold a "
                                 "temperature into.")
            for layer in layers:
                layer.weight.div_(temperature)
                if layer.bias is not None:
                    layer.bias.div_(temperature)


def check_folded(before: CachedLogits, after: CachedLogits, temperatures: Sequence[float],
                 tolerance: float = 1e-4) -> None:
    """Raise when the logits of the folded model are not the old ones divided by each exit's temperature (a head
    whose logits come from more than its classifier layers), up to `tolerance` relative to the largest logit (the
    rounding of the precision the logits were computed in)."""
    for index, temperature in enumerate(temperatures):
        expected = before.exit_logits[index] / temperature
        if not torch.allclose(after.exit_logits[index], expected, rtol=tolerance,
                              atol=tolerance * float(expected.abs().max())):
            raise RuntimeError(f"Folding temperature {temperature:.4g} into exit {index} did not divide its logits "
                               "by it; its head is not linear in its classifier layers.")


def scale_exits(model: nn.Module, cache: CachedLogits, fraction: float,
                recollect: Callable[[list[int]], CachedLogits], seed: int = 0,
                tolerance: float = 1e-4) -> tuple[CachedLogits, TemperatureFit]:
    """Fit exit temperatures on a random `fraction` of the cached calibration images and fold them into `model`.

    Args:
        model: the model the cache came from.
        cache: its logits on the calibration images.
        fraction: the share of the images that fits the temperatures.
        recollect: logits of the (now scaled) model on the images at these indices of the cache.
        seed: the draw of the fitting images.
        tolerance: how far the scaled logits may stray from the old ones / T (`check_folded`).

    Returns:
        the scaled model's logits on the other images (the ones left for the thresholds), and the fit.
    """
    cut = temperature_samples(len(cache), fraction)
    if not 0 < cut < len(cache):
        raise ValueError(f"--temperature_split={fraction} sets apart {cut} of {len(cache)} calibration images; "
                         "temperatures and thresholds each need some.")
    order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(seed))
    fitting = cache.select(order[:cut])
    temperatures = fit_exit_temperatures(fitting)
    unfitted = [index for index, logits in enumerate(fitting.exit_logits) if not fits(logits, fitting.labels)]
    if unfitted:
        logger.warning("Exits %s answered all %d temperature-fitting images right, so no temperature fits them "
                       "(the likelihood keeps rising as T shrinks); they keep T = 1. A larger --temperature_split "
                       "gives them images to fit on.", unfitted, cut)
    fold_temperatures(model, temperatures)
    rest = order[cut:]
    before, after = cache.select(rest), recollect(rest.tolist())
    check_folded(before, after, temperatures, tolerance)
    return after, TemperatureFit.measure(temperatures, cut, before, after)


@dataclass(frozen=True)
class TemperatureFit:
    """Exit temperatures and what they did to the exits' calibration.

    Attributes:
        temperatures: one per exit, in position order.
        fit_samples: images they were fitted on.
        ece_before, ece_after: expected calibration error of each exit on the other calibration images, before and
            after scaling.
    """

    temperatures: tuple[float, ...]
    fit_samples: int
    ece_before: tuple[float, ...]
    ece_after: tuple[float, ...]

    @classmethod
    def measure(cls, temperatures: Sequence[float], fit_samples: int, before: CachedLogits,
                after: CachedLogits) -> TemperatureFit:
        """The record of one fit, with each exit's ECE on `before`/`after` (the same images, unscaled/scaled)."""
        def ece(cache: CachedLogits) -> tuple[float, ...]:
            return tuple(expected_calibration_error(logits, cache.labels) for logits in cache.exit_logits)

        return cls(tuple(temperatures), fit_samples, ece(before), ece(after))

    def as_dict(self) -> dict[str, object]:
        return {f"exit_{key}": value for key, value in asdict(self).items()}

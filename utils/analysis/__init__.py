"""Accuracy-speed analysis: FLOPs per part, threshold sweeps from cached logits, calibration, wall-clock timing,
figures, and the reports of an evaluation, of the quickstart and of the method comparison."""

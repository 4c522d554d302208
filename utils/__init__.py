"""Helpers of the LGViT training pipeline: arguments, data, metrics, Trainer and checkpoint tools."""

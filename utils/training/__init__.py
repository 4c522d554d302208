"""One training or evaluation run: its arguments, output directory rule, model set-up, Trainer, metrics and logging."""

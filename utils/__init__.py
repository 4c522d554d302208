"""Everything around the models, by job: `data` (datasets, transforms), `training` (the run's arguments, model set-up,
Trainer, metrics), `analysis` (FLOPs, sweeps, calibration, timing, figures, reports) and the command-line
converters of other checkpoint formats (`convert_original_checkpoint`, `convert_timm_checkpoint`)."""

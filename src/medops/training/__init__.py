"""Training: models, augmentation, batches, the loop, checkpoints, Optuna studies, seed runs."""

"""`epochs: auto`, `patience: auto` and `width: auto`: defaults scaled with the data.

A fixed number of epochs means very different training for MedMNIST's sets: 30 epochs are 270
optimiser steps on BreastMNIST (546 images, batch 64) and 42,000 on PathMNIST (90,000 images).
`auto` aims every set at about the same number of steps, within bounds, and gives early stopping
a patience in proportion to the epochs, so a small set's noisy validation split does not stop it
after a handful of passes. 3D sets aim at fewer steps: a step on 64 volumes of 28^3 costs about
ten times one on 64 images of 28^2 (cnn3d on AdrenalMNIST3D 1 s, baseline_cnn on PneumoniaMNIST
0.09 s, 2 CPU cores), and MedMNIST's 3D sets all hold 1,000-1,300 training volumes, so they get
30-40 epochs. Only the split size, the batch size and the dimensionality go in, never the
dataset's name.

`width: auto` doubles the channels of the plain 2D CNNs and keeps the 3D ones as they are:
by name only, over six seeds, twice the width raised PneumoniaMNIST's test AUC by 0.004 (ACC
0.897 and 0.898), left BreastMNIST's where they were (0.921 / 0.884 and 0.921 / 0.886) for about
three times the training time, and bought AdrenalMNIST3D nothing (README, Models): a small gain
on the largest 2D set here, kept for the large ones, which should want the capacity more.
"""

from __future__ import annotations

import math

AUTO = "auto"
TARGET_STEPS = {False: 2000, True: 600}  # optimiser steps a run aims at, 2D and 3D
MIN_EPOCHS, MAX_EPOCHS = 10, 100  # a huge set still gets several passes; a tiny one at most MedMNIST v2's 100
# Early stopping waits a third of the epochs, and never fewer than 10: with a cosine schedule the
# best epochs come late, and a quarter (at least 5) stopped a PneumoniaMNIST seed at epoch 9 of 28
# on validation noise (test AUC 0.948 against 0.974-0.978 for the two seeds that ran on).
PATIENCE_SHARE = 1 / 3
MIN_PATIENCE = 10


def auto_epochs(n_train: int, batch_size: int, is_3d: bool) -> int:
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS[is_3d] / steps_per_epoch)))


def auto_patience(epochs: int) -> int:
    return max(MIN_PATIENCE, round(epochs * PATIENCE_SHARE))


AUTO_WIDTH = {False: 2.0, True: 1.0}  # 2D, 3D


def resolve_width(width: float | str, is_3d: bool) -> float:
    """The channel-width factor a run builds its model with: a given number as it is, `auto` by
    the data's dimensionality."""
    return AUTO_WIDTH[is_3d] if width == AUTO else float(width)


def resolve_budget(epochs: int | str, patience: int | str, n_train: int, batch_size: int,
                   is_3d: bool) -> tuple[int, int]:
    """The (epochs, patience) a run trains with: given numbers as they are, `auto` from the data."""
    epochs = auto_epochs(n_train, batch_size, is_3d) if epochs == AUTO else epochs
    patience = auto_patience(epochs) if patience == AUTO else patience
    return epochs, patience

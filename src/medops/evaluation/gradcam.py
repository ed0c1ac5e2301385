"""Grad-CAM with pytorch-grad-cam, for 2D and 3D models (3D: the middle axial slice is shown).

The target layer is the last convolution whose output map is still at least MIN_MAP wide:
the small CNNs pool 28px inputs down to 1x1 in their last block, where a CAM says nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medops.release.inference import InferenceModel
from medops.plotting import plt
from medops.task_rules import MULTI_LABEL, predicted_labels

MIN_MAP = 3


def target_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last Conv2d/Conv3d whose output is at least MIN_MAP in every spatial dimension."""
    shapes, hooks = {}, []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            hooks.append(module.register_forward_hook(lambda m, _i, out: shapes.__setitem__(m, out.shape[2:])))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    wide = [m for m, s in shapes.items() if min(s) >= MIN_MAP] or list(shapes)
    if not wide:
        raise ValueError(f"{type(model).__name__} has no convolution layer to explain")
    return wide[-1]


def cams(module: InferenceModel, images: np.ndarray, classes: list[int]) -> np.ndarray:
    """One Grad-CAM map per image (values 0..1, the image's spatial shape) for the given classes."""
    # here, not at the top: pytorch-grad-cam imports torchvision, OpenCV and scikit-learn's
    # decomposition, seconds that every flow and study process would pay before its first step
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = module.model.eval()
    x = module.normalize(torch.from_numpy(np.ascontiguousarray(images)))
    with GradCAM(model=net, target_layers=[target_layer(net, x[:1])]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])


def _show(ax, image: np.ndarray, cam: np.ndarray, caption: str) -> None:
    """Overlay on the image, or on the middle axial slice of a volume (cam is D, H, W then)."""
    img = image.astype(np.float32) / 255.0
    if cam.ndim == 3:
        img, heat = img[img.shape[0] // 2], cam[cam.shape[0] // 2]
    else:
        heat = cam
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax.set_title(caption, fontsize=7)
    ax.axis("off")


def examples_grid(module: InferenceModel, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                  task: str, title: str, per_class: int = 2):
    """Rows: classes; columns: `per_class` correctly then wrongly classified test images,
    each with the Grad-CAM of its true class. Empty cells say none were found."""
    with torch.no_grad():
        scores = module(torch.from_numpy(np.ascontiguousarray(images))).numpy()
    pred = predicted_labels(scores, task)
    y = labels.reshape(len(labels), -1)
    n = len(class_names)
    # constrained layout reserves room for each panel's two-line title: no row overlaps the next
    fig, axes = plt.subplots(n, 2 * per_class, figsize=(1.9 * 2 * per_class, 2.2 * n + 0.5), squeeze=False,
                             layout="constrained")
    for c, name in enumerate(class_names):
        if task == MULTI_LABEL:
            has = y[:, c] == 1
            right, wrong = np.flatnonzero(has & (pred[:, c] == 1)), np.flatnonzero(has & (pred[:, c] == 0))
        else:
            right, wrong = np.flatnonzero((y[:, 0] == c) & (pred == c)), np.flatnonzero((y[:, 0] == c) & (pred != c))
        picks = [(i, "correct") for i in right[:per_class]] + [None] * (per_class - min(per_class, len(right)))
        picks += [(i, "wrong") for i in wrong[:per_class]] + [None] * (per_class - min(per_class, len(wrong)))
        chosen = [p[0] for p in picks if p]
        maps = cams(module, images[chosen], [c] * len(chosen)) if chosen else []
        k = 0
        for col, pick in enumerate(picks):
            ax = axes[c, col]
            if pick is None:
                ax.axis("off")
                ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=7)
                continue
            i, kind = pick
            p_true = scores[i, c]
            _show(ax, images[i], maps[k], f"{name[:18]}\n{kind}, p={p_true:.2f}")
            k += 1
    fig.suptitle(f"Grad-CAM: {title} (true class; left correct, right wrong)", fontsize=9)
    return fig


def predictions_grid(module: InferenceModel, images: np.ndarray, names: list[str], class_names: list[str],
                     task: str, columns: int = 6):
    """Grad-CAM of the predicted class for each given image (medops explain)."""
    with torch.no_grad():
        scores = module(torch.from_numpy(np.ascontiguousarray(images))).numpy()
    pred = scores.argmax(axis=1)  # multi-label: the most likely finding
    maps = cams(module, images, pred.tolist())
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, min(columns, len(images)), figsize=(2.0 * min(columns, len(images)), 2.4 * rows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:len(images)]):
        _show(ax, images[i], maps[i], f"{names[i][:20]}\n{class_names[pred[i]][:18]} p={scores[i, pred[i]]:.2f}")
    return fig

"""Checkpoints: a plain dict of tensors and numbers, loaded with weights_only=True.

Each one records the architecture, what the model takes (InputSpec) and how to normalise,
so a model can be rebuilt from the file alone and a mismatch is a sentence, not a
state-dict shape traceback.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from medops.errors import MedopsError
from medops.files import atomic_path
from medops.training.models import InputSpec, build_model

FORMAT = 1


def save_checkpoint(path: Path | str, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise MedopsError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise MedopsError(f"{path}: not a readable medops checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "arch" not in ckpt:
        raise MedopsError(f"{path}: not a medops checkpoint (format {FORMAT})")
    return ckpt


def check_compatible(ckpt: dict, path: Path | str, arch: str, spec: InputSpec) -> None:
    """Refuse a checkpoint made for another architecture or other data, naming the difference."""
    saved = InputSpec(**ckpt["input"])
    problems = []
    if ckpt["arch"] != arch:
        problems.append(f"architecture {ckpt['arch']} (expected {arch})")
    for field in dataclasses.fields(InputSpec):
        have, want = getattr(saved, field.name), getattr(spec, field.name)
        if have != want:
            problems.append(f"{field.name} {have} (expected {want})")
    if problems:
        raise MedopsError(f"{path}: checkpoint was made for different model or data: " + ", ".join(problems))


def model_from_checkpoint(path: Path | str, map_location="cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    ckpt = load_checkpoint(path, map_location)
    model = build_model(ckpt["arch"], InputSpec(**ckpt["input"]), **ckpt.get("model_options", {}))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise MedopsError(f"{path}: weights do not fit {ckpt['arch']}: {str(exc).splitlines()[0]}") from None
    return model.eval(), ckpt

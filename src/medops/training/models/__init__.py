"""Architectures by registry name. Input channels, classes, 2D/3D and size come from the data."""

from medops.training.models.catalog import ARCHITECTURES, InputSpec, build_model, fitting

__all__ = ["ARCHITECTURES", "InputSpec", "build_model", "fitting"]

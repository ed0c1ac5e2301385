"""medops: MedMNIST classification pipeline library (no orchestration imports here)."""

__version__ = "0.1.0"

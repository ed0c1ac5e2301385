"""Synthetic sets in the official layout, through the real preprocess stage, for the benches
that run the pipeline on a throwaway project (fanout.py, flow_startup.py)."""

from __future__ import annotations

import os
from pathlib import Path


def prepare_synthetic(project: Path, flags, samples: int) -> None:
    """data/raw/<flag>.npz (28 px) and data/processed/<flag> inside project, for each flag."""
    from medops import paths
    from medops.config import DatasetParams
    from medops.data.preprocess import preprocess
    from medops.data.synth import write_synthetic

    cwd = os.getcwd()
    os.chdir(project)  # the stages write relative to the project root
    try:
        for flag in flags:
            write_synthetic(flag, 28, samples, paths.raw_file(flag).parent)
            preprocess(flag, DatasetParams(source="custom"))
    finally:
        os.chdir(cwd)

"""Logging setup shared by the CLI and the flows."""

from __future__ import annotations

import logging


def setup_logging(handler: logging.Handler | None = None) -> None:
    """Show medops progress at INFO on its own handler, whatever the host (Prefect, DVC)
    did to the root logger; libraries keep their own settings."""
    logger = logging.getLogger("medops")
    if any(getattr(h, "_medops", False) for h in logger.handlers):
        return
    handler = handler or logging.StreamHandler()
    handler._medops = True
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

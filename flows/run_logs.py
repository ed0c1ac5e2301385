"""medops progress in the Prefect UI: records of the `medops` loggers made inside a flow or task
run go to that run's logs, beside Prefect's own lines. (Prefect sends only its own loggers and
those of PREFECT_LOGGING_EXTRA_LOGGERS, which count only when set before Prefect is imported.)"""

from __future__ import annotations

import logging
import sys

from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler


class RunLogHandler(APILogHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], MissingContextError):
            return  # made outside any run (a direct call of a pipeline function): not a run's log
        super().handleError(record)


def send_medops_logs() -> None:
    """Idempotent; the console handler stays medops.logs.setup_logging's business."""
    logger = logging.getLogger("medops")
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, RunLogHandler) for h in logger.handlers):
        logger.addHandler(RunLogHandler())

"""A faster interpreter exit for the pipeline's short-lived processes.

A process that has imported torch, MLflow, Optuna and Prefect spends about 2 s after its last
line in the interpreter's final garbage collections (a data stage with Great Expectations about
1 s): once per `train@<flag>` stage, per study run in pool mode, per data stage. Freezing the
heap at exit (`gc.freeze`) moves every object to the permanent generation, which those
collections skip. The atexit handlers of libraries imported later (Prefect's and MLflow's
flushes) run before it, logging's after it; objects still reachable at exit are freed by the OS,
as they would be anyway: Python does not promise to finalise them. bench/exit_time.py measures it.
"""

import atexit
import gc

_registered = False


def freeze_heap_at_exit() -> None:
    """Freeze the heap when this process exits (an atexit handler, registered once)."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True

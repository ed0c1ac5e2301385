"""The command a pool worker starts for each study run: Prefect's engine (`python -m
prefect.engine`, which reads the flow run from PREFECT__FLOW_RUN_ID), then a fast exit
(medops.exiting): a worker with `--limit 1` takes the next study run only once this process has
ended. Run by path (`python <project>/flows/engine.py`), so it works from the temporary folder a
process worker starts it in, before the deployment's pull step moves to the project.
"""

import runpy

from medops.exiting import freeze_heap_at_exit

if __name__ == "__main__":
    freeze_heap_at_exit()
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)

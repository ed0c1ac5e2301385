"""Training runs side by side in child processes, each on its share of this process's threads.

On a CPU the small models here use two cores poorly: on a 2-core host, two seed runs on one
thread each finished 1.1-1.4x sooner than the same two runs one after another on two threads
(README, Benchmarks). Each run is a child process (`python -m medops.training.side_by_side SPEC`):
it imports only the trainer and owns its random number generators, so a run trains as it would
alone. Its log lines come back through this process's logger (and so to the Prefect run), and it
hands back its kept epoch, its per-epoch validation record and what it ran on in `run.json`
beside its checkpoints. A child dies with this process (Linux: the parent-death signal), so a
killed pipeline leaves no run training on.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import torch

from medops.config import TrainParams
from medops.errors import MedopsError
from medops.files import write_json

log = logging.getLogger(__name__)

SPEC, RESULT = "spec.json", "run.json"
TAIL_LINES = 15  # of a failed run's output, quoted in the error


class SideBySideFailed(MedopsError):
    """A child training run exited with an error; the others were stopped."""


def processes_for(choice: int | str, n_runs: int, device: str) -> int:
    """How many runs go side by side: `auto` on a CPU one per thread this process may use (its
    torch threads), at most one per run; on a GPU one (the runs would share the device)."""
    if choice != "auto":
        return max(1, min(int(choice), n_runs))
    if device != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), n_runs))


def train_side_by_side(processed: Path, runs: list[tuple[TrainParams, Path]], processes: int,
                       on_done=None, stop_on_failure: bool = True) -> list[dict]:
    """Train each (recipe, out folder) in a child process, `processes` at a time, splitting this
    process's threads among them. Returns, in order, each run's {"checkpoint", "best_epoch",
    "best_score", "history", "seconds", "device", "precision", "layout"}; on_done(i) is called
    as run i finishes. If one run fails the others are stopped (their last.pt stays, so a rerun
    resumes them) and the error quotes its last lines; with stop_on_failure=False (Optuna
    trials, each free to fail) the others go on and the failed run's result is {"error",
    "infrastructure"}: infrastructure when a disk or other OS error stopped it."""
    threads = max(1, torch.get_num_threads() // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    pending = collections.deque(enumerate(runs))
    running: dict[subprocess.Popen, tuple[int, Path, collections.deque]] = {}
    results: list[dict | None] = [None] * len(runs)
    selector = selectors.DefaultSelector()
    try:
        while pending or running:
            while pending and len(running) < processes:
                i, (cfg, out) = pending.popleft()
                out.mkdir(parents=True, exist_ok=True)
                (out / RESULT).unlink(missing_ok=True)
                write_json(out / SPEC, {"processed": str(processed), "config": cfg.model_dump(mode="json"),
                                        "out": str(out), "threads": threads, "parent": os.getpid()})
                child = subprocess.Popen([sys.executable, "-m", __name__, str(out / SPEC)], env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                running[child] = (i, out, collections.deque(maxlen=TAIL_LINES))
                selector.register(child.stdout, selectors.EVENT_READ, child)
            for key, _ in selector.select(timeout=1.0):
                child = key.data
                line = child.stdout.readline()
                if line:
                    running[child][2].append(line.rstrip())
                    log.info("%s: %s", running[child][1].name, line.rstrip())  # which run said it
                    continue
                selector.unregister(child.stdout)
                child.stdout.close()
                code = child.wait()
                i, out, tail = running.pop(child)
                result = json.loads((out / RESULT).read_text()) if (out / RESULT).exists() else {}
                if code != 0 or "error" in result or not result:
                    failure = (f"training run in {out} failed (exit code {code}); its last lines:\n  "
                               + "\n  ".join(tail))
                    if stop_on_failure:
                        raise SideBySideFailed(failure)
                    result = {"error": result.get("error", failure), "infrastructure": result.get("infrastructure", False)}
                results[i] = result
                if on_done is not None:
                    on_done(i)
    finally:
        for child in running:
            child.kill()
            child.wait()
            child.stdout.close()
        selector.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """One child run: the spec file train_side_by_side wrote."""
    from medops.exiting import freeze_heap_at_exit
    from medops.logs import setup_logging
    from medops.training.loop import train

    freeze_heap_at_exit()  # its sibling or the flow waits on its exit (medops.exiting)
    spec = json.loads(Path((argv if argv is not None else sys.argv[1:])[0]).read_text())
    die_with_parent(spec["parent"])
    torch.set_num_threads(spec["threads"])
    setup_logging(logging.StreamHandler(sys.stdout))
    out = Path(spec["out"])
    try:
        result = train(Path(spec["processed"]), TrainParams.model_validate(spec["config"]), out)
    except Exception as exc:
        if isinstance(exc, MedopsError):
            print(f"error: {exc}", flush=True)
        else:
            traceback.print_exc(file=sys.stdout)
        # the parent records it as the run's error (an Optuna trial's, as a trial in turn would)
        write_json(out / RESULT, {"error": f"{type(exc).__name__}: {exc}", "infrastructure": isinstance(exc, OSError)})
        return 1
    write_json(out / RESULT, {
        "checkpoint": str(result.checkpoint), "best_epoch": result.best_epoch, "best_score": result.best_score,
        "history": result.history, "seconds": round(result.seconds, 2), "device": result.device,
        "precision": result.precision, "layout": result.layout,
    })
    return 0


def die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (PR_SET_PDEATHSIG): a pipeline that
    was killed must not leave runs training on, writing checkpoints that its retry resumes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())

"""The pipeline's entry points freeze the heap on their way out (medops.exiting), on success and
on error alike; atexit handlers registered before theirs still run after it."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# An atexit handler registered first runs last: it sees the heap as the interpreter finalises it.
PROBE = ("import atexit, gc, runpy, sys; "
         "atexit.register(lambda: print('frozen objects at exit:', gc.get_freeze_count(), flush=True)); "
         "sys.argv = sys.argv[1:]; ")


@pytest.mark.parametrize("entry, args, code", [
    # a command that works, and one that fails with a MedopsError (exit 1)
    ("runpy.run_module('medops', run_name='__main__', alter_sys=True)",
     ["medops", "data", "synth", "--flag", "breastmnist", "--samples", "2", "--out", "{tmp}"], 0),
    ("runpy.run_module('medops', run_name='__main__', alter_sys=True)",
     ["medops", "data", "validate", "breastmnist", "--params", "no-such-params.yaml"], 1),
    ("runpy.run_module('flows.training', run_name='__main__', alter_sys=True)", ["training", "--help"], 0),
    # no flow run id: Prefect's engine logs the error and exits 1
    ("runpy.run_path('flows/engine.py', run_name='__main__')", ["engine.py"], 1),
])
def test_entry_points_freeze_the_heap_before_the_interpreter_exits(entry, args, code, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the session's Prefect home, not the user's
    out = subprocess.run([sys.executable, "-c", PROBE + entry, *args], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == code, out.stderr[-2000:]
    frozen = [line for line in out.stdout.splitlines() if line.startswith("frozen objects at exit:")]
    assert frozen and int(frozen[0].split(":")[1]) > 10_000, out.stdout[-2000:]  # the whole heap, not a few

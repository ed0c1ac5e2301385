"""Freed memory kept for reuse (medops.memory): a large block freed and allocated again stops
costing a page fault for every page."""

import os
import platform
import subprocess
import sys

import pytest

from medops import memory
from tests.conftest import REPO

# In a fresh interpreter: other tests in this process may have trained, which already asked for it.
PROBE = """
import resource, torch
from medops.memory import keep_freed_memory

def faults():
    \"\"\"Page faults of 8 allocations of a 64 MiB block (glibc mmaps blocks this large), after 16
    more: with mmap off the heap grows for the first 5-8 before a freed block fits the next one.\"\"\"
    for i in range(24):
        if i == 16:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(64 << 20, dtype=torch.uint8)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

as_is = faults()
kept = keep_freed_memory()
print(as_is, kept, faults())
"""


def probe(**env) -> tuple[int, str, int]:
    environ = {k: v for k, v in os.environ.items() if k != memory.OPT_OUT and k not in memory.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**environ, **env})
    as_is, kept, after = out.stdout.split()
    return int(as_is), kept, int(after)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; other C libraries are left as they are")
def test_a_freed_large_block_is_reused_without_new_page_faults():
    as_is, kept, after = probe()
    assert kept == "True"
    # as is: every allocation faults its pages in again (how many depends on the page size and
    # transparent huge pages); kept: they are reused (at most 2 of the 8 allocations fault)
    assert as_is > 0 and after * 4 <= as_is


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; other C libraries are left as they are")
@pytest.mark.parametrize("env", [{"MEDOPS_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}],
                         ids=["opted out", "user's own malloc setting"])
def test_malloc_is_left_as_it_is_when_asked(env):
    as_is, kept, after = probe(**env)
    assert kept == "False"
    assert after * 2 > as_is  # still faulting every allocation in

"""Freed memory kept for reuse (medops.memory): a large block freed and allocated again stops
costing a page fault for every page."""

import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO

# In a fresh interpreter: other tests in this process may have trained, which already asked for it.
PROBE = """
import resource, torch
from medops.memory import keep_freed_memory

def faults():
    \"\"\"Page faults of 8 allocations of a 64 MiB block (glibc mmaps blocks this large), after 8
    more that let the heap settle.\"\"\"
    for i in range(16):
        if i == 8:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(64 << 20, dtype=torch.uint8)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

as_is = faults()
kept = keep_freed_memory()
print(as_is, kept, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; other C libraries are left as they are")
def test_a_freed_large_block_is_reused_without_new_page_faults():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    as_is, kept, after = out.stdout.split()
    assert kept == "True"
    # as is: every allocation faults in its 16,384 pages again; kept: they are reused
    assert int(as_is) >= 8 * 16_384
    assert int(after) < 16_384

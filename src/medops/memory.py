"""Freed memory kept for reuse by this process, instead of handed back to the kernel at once.

glibc's malloc serves every block over 32 MiB with its own mmap and unmaps it when it is freed.
A training step of a 3D model at batch 32 allocates several such blocks (AdrenalMNIST3D's first
activations are 45 MB), so every step's pages were new to the kernel, which faulted them in and
zeroed them: a `make run` on the 2-core AVX2-only host took 60 million page faults and 198 s of
system time. With mmap off, large blocks come from the heap and stay with the process when
freed (only a free top of the heap over KEEP_BYTES goes back), so the next step reuses the same
pages: AdrenalMNIST3D's epochs ran 1.30x as fast there, with the same weights to the bit and 6 %
more peak memory (bench/page_faults.py). The 2D models' blocks are small: they neither gain nor
lose. Left as it is: other C libraries (musl, macOS), a process whose user set glibc's malloc
through the environment, and MEDOPS_KEEP_FREED_MEMORY=0.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 1 << 30  # a free top of the heap beyond this still goes back to the kernel
OPT_OUT = "MEDOPS_KEEP_FREED_MEMORY"
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

_kept: bool | None = None  # asked once per process


def _user_tuned_malloc() -> bool:
    return any(v in os.environ for v in USER_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (process-wide, from now on); False where it was
    left alone (see above) or glibc refused."""
    global _kept
    if _kept is None:
        _kept = _ask_glibc()
    return _kept


def _ask_glibc() -> bool:
    if os.environ.get(OPT_OUT) == "0" or _user_tuned_malloc() or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the threshold first: alone it changes nothing, while mmap off alone would still trim every free
    if mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) != 1:
        log.debug("glibc refused M_TRIM_THRESHOLD; freed memory goes back to the kernel as before")
        return False
    if mallopt(M_MMAP_MAX, 0) != 1:
        log.debug("glibc refused M_MMAP_MAX; large blocks are still mmapped and unmapped")
        return False
    return True

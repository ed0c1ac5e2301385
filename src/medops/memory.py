"""Freed memory kept for reuse by this process, instead of handed back to the kernel at once.

glibc's malloc serves every block over 32 MiB with its own mmap and unmaps it when it is freed.
A training step of a 3D model at batch 32 allocates several such blocks (AdrenalMNIST3D's first
activations are 45 MB), so every step's pages were new to the kernel, which faulted them in and
zeroed them: a `make run` on the 2-core AVX2-only host took 60 million page faults and 198 s of
system time. With mmap off and the heap's free top kept up to KEEP_BYTES, the next step reuses
the same pages: AdrenalMNIST3D's epochs ran 1.30x as fast there, with the same weights to the
bit and 6 % more peak memory (bench/page_faults.py). The 2D models' blocks are small: they
neither gain nor lose. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 1 << 30  # free memory at the heap's top beyond this still goes back to the kernel

_kept = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (process-wide, from now on); False where the C
    library is not glibc or refused."""
    global _kept
    if _kept:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1
    if not _kept:
        log.debug("glibc refused to keep freed memory; training runs as before")
    return _kept

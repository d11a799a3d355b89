"""How predictor processes allocate host memory: keep freed blocks for reuse instead of returning them.

A CPU forward pass allocates and frees tens of megabytes per layer (one activation of Lite0 at batch 16 is
77 MB). glibc serves blocks that large with a fresh `mmap` and unmaps them on free, so every forward pass
touches all of its activations as new pages: the kernel faults in and zeroes each 4 KiB page again. Measured
on a 2-CPU KVM guest: 80,000-120,000 page faults per Lite0 batch and 2.2-2.9x the forward time of the
same process with the settings below (4,500 faults). PyTorch has no caching allocator on the CPU, so the
fix is the C allocator's: serve large blocks from the heap, keep freed memory at the top of it instead of
trimming it, and use one arena, since the per-thread arenas that glibc gives other threads (Ray Data calls
the predictor from one) are capped at 64 MiB and fall back to `mmap` above that. A process then holds on to
its peak working set, which is what a caching allocator does; the 1 GiB bounds what it keeps unused.

The settings are glibc's documented environment variables (mallopt(3)), read at process start, so they are
given to the predictor actors through their Ray runtime environment; other C libraries ignore them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

RETAINED_BYTES = 1 << 30

# (environment variable, mallopt(3) parameter number from glibc's <malloc.h>, value): one table for both ways
# of applying the settings.
_SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("MALLOC_MMAP_THRESHOLD_", -3, RETAINED_BYTES),
    ("MALLOC_TRIM_THRESHOLD_", -1, RETAINED_BYTES),
    ("MALLOC_ARENA_MAX", -8, 1),
)

ALLOCATOR_ENV: dict[str, str] = {variable: str(value) for variable, _, value in _SETTINGS}


def retain_freed_memory() -> bool:
    """Applies `ALLOCATOR_ENV`'s settings to this already running process through `mallopt`; True if the C
    library took them all. For processes started without the environment (the benchmark's driver, a
    notebook). Threads that already have an arena keep it, so call this before starting threads that allocate."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # not glibc (macOS, musl without mallopt): nothing to tune
        logger.info("no mallopt in this C library; host allocator left as is")
        return False
    taken = [mallopt(parameter, value) == 1 for _, parameter, value in _SETTINGS]  # each, even after a refusal
    return all(taken)

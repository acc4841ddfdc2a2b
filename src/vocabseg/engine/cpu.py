"""What this CPU runs natively, read once from /proc/cpuinfo (empty where there is none)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def present(wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The flags of ``wanted`` this CPU has, in ``wanted``'s order."""
    return tuple(flag for flag in wanted if flag in _flags())

"""A process's memory as the benchmark reads it: RSS, peak RSS (resettable on Linux) and the memory available."""

from __future__ import annotations

import resource
import sys


def _status_kib(field: str) -> int | None:
    """Return field ``VmRSS``, ``VmHWM``, ... of ``/proc/self/status`` in KiB (``None`` off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss() -> int:
    """Return the ``VmRSS`` of this process in bytes (0 off Linux)."""
    return 1024 * (_status_kib("VmRSS") or 0)


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (``VmHWM``) where Linux allows it; return the current RSS in bytes.

    Writing ``5`` to ``/proc/self/clear_refs`` sets ``VmHWM`` back to
    ``VmRSS``.  Without it (or off Linux) the peak is the lifetime
    ``ru_maxrss``, and growth figures are only upper bounds.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    return rss()


def peak_rss() -> int:
    """Peak RSS in bytes since the last :func:`reset_peak_rss` (``VmHWM``; lifetime ``ru_maxrss`` off Linux)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return 1024 * hwm
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return 1024 * int(line.split()[1])
    except OSError:
        pass
    return None

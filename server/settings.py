"""Every environment variable mpilock reads, parsed and checked once, in one place.

A malformed value raises :class:`mpilock.errors.ConfigError` when mpilock is
imported, naming the variable and the form it accepts, instead of failing
later inside the server thread or at ``close()``.  The README's table of
environment variables lists the same names (``VARIABLES`` below is its source).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, default and accepted form."""

    name: str
    default: str
    form: str
    """The accepted form, as the error message and the README state it."""
    meaning: str


VARIABLES = {
    v.name: v
    for v in (
        Variable(
            "MPILOCK_TRACE",
            "",
            "a file path (its directory must exist and be writable)",
            "Chrome trace file the master writes at close (like sync(trace=...))",
        ),
        Variable(
            "MPILOCK_WAIT_REPORT",
            "60",
            "seconds > 0, or 0 to switch the reports off",
            "a wait longer than this logs the lock's holders and queue, then again at doubling intervals",
        ),
        Variable(
            "MPILOCK_SITES",
            "1",
            "1 or 0 (also true/false, yes/no, on/off)",
            "send each lock's acquire site (file:line) to the server, for reports and deadlock messages",
        ),
        Variable(
            "MPILOCK_SWITCH_INTERVAL",
            "0.0005",
            "seconds >= 0 (0 leaves the interval alone)",
            "GIL switch interval of the master while its pure-Python server loop runs (the native loop leaves it)",
        ),
        Variable(
            "MPILOCK_SPIN", "0.0002", "seconds >= 0", "how long the server only yields after activity before it sleeps"
        ),
        Variable(
            "MPILOCK_CLIENT_SPIN",
            "0.002",
            "seconds >= 0",
            "how long a rank waiting for a reply only yields before it sleeps",
        ),
        Variable(
            "MPILOCK_MAX_SLEEP",
            "0.001",
            "seconds > 0",
            "longest sleep between two polls (the worst extra latency of an idle poller)",
        ),
        Variable(
            "MPILOCK_NATIVE",
            "1",
            "1 or 0 (also true/false, yes/no, on/off)",
            "serve locks from the native (C) loop where it was built; 0 forces the pure-Python loop",
        ),
        Variable(
            "MPILOCK_NATIVE_HOT",
            "0.005",
            "seconds >= 0",
            "how long after a request the native loop keeps polling every 10 µs (a client's think time)",
        ),
        Variable(
            "MPILOCK_NATIVE_IDLE_SLEEP",
            "0.005",
            "seconds > 0",
            "longest sleep of the idle native loop (the worst extra latency of the first grant after idling)",
        ),
        Variable(
            "MPILOCK_WAKE",
            "1",
            "1 or 0 (also true/false, yes/no, on/off)",
            "wake the idle server from a client on its node (a futex word in shared memory) instead of waiting out "
            "its sleep; 0 keeps the timed sleeps",
        ),
        Variable(
            "MPILOCK_WAKE_SLEEP",
            "0.1",
            "seconds > 0",
            "longest sleep of an idle server that every client can wake (one on another node caps it at "
            "MPILOCK_NATIVE_IDLE_SLEEP)",
        ),
        Variable(
            "MPILOCK_CONTENDED_SLEEP",
            "0.0005",
            "seconds >= 0 (0 switches the rule off)",
            "shortest sleep of a server thread whose pauses overrun (the application holds the GIL)",
        ),
    )
}
"""Every variable mpilock reads, by name."""


def _raw(name: str, environ: Mapping[str, str]) -> str:
    value = environ.get(name)
    return VARIABLES[name].default if value is None or value.strip() == "" else value.strip()


def _invalid(name: str, value: str) -> ConfigError:
    variable = VARIABLES[name]
    return ConfigError(
        f"environment variable {name}={value!r} is not valid: expected {variable.form} (default {variable.default!r})"
    )


def seconds(name: str, positive: bool = False, environ: Mapping[str, str] = os.environ) -> float:
    """Return the number of seconds in variable ``name`` (its default if unset); ``ConfigError`` if malformed."""
    value = _raw(name, environ)
    try:
        number = float(value)
    except ValueError:
        raise _invalid(name, value) from None
    if math.isnan(number) or math.isinf(number) or number < 0 or (positive and number == 0):
        raise _invalid(name, value)
    return number


def flag(name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Return the on/off value of variable ``name``; ``ConfigError`` if malformed."""
    value = _raw(name, environ)
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _invalid(name, value)


def path(name: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """Return the path in variable ``name``, or ``None`` if unset (checked where it is used)."""
    value = _raw(name, environ)
    return value or None


@dataclass(frozen=True)
class Settings:
    """The parsed values of every variable."""

    trace: str | None
    wait_report: float
    sites: bool
    switch_interval: float
    spin: float
    client_spin: float
    max_sleep: float
    contended_sleep: float
    native: bool
    native_hot: float
    native_idle_sleep: float
    wake: bool
    wake_sleep: float


def load(environ: Mapping[str, str] = os.environ) -> Settings:
    """Parse and check every variable of ``environ``; raise ``ConfigError`` for the first malformed one."""
    return Settings(
        trace=path("MPILOCK_TRACE", environ),
        wait_report=seconds("MPILOCK_WAIT_REPORT", environ=environ),
        sites=flag("MPILOCK_SITES", environ),
        switch_interval=seconds("MPILOCK_SWITCH_INTERVAL", environ=environ),
        spin=seconds("MPILOCK_SPIN", environ=environ),
        client_spin=seconds("MPILOCK_CLIENT_SPIN", environ=environ),
        max_sleep=seconds("MPILOCK_MAX_SLEEP", positive=True, environ=environ),
        contended_sleep=seconds("MPILOCK_CONTENDED_SLEEP", environ=environ),
        native=flag("MPILOCK_NATIVE", environ),
        native_hot=seconds("MPILOCK_NATIVE_HOT", environ=environ),
        native_idle_sleep=seconds("MPILOCK_NATIVE_IDLE_SLEEP", positive=True, environ=environ),
        wake=flag("MPILOCK_WAKE", environ),
        wake_sleep=seconds("MPILOCK_WAKE_SLEEP", positive=True, environ=environ),
    )


SETTINGS = load()
"""The values of this process, read once when mpilock is imported."""

"""OpenTelemetry spans of lock calls, named as mpilock 2.x named them (the ``otel`` extra).

With ``opentelemetry-api`` installed (``pip install 'mpilock-server[otel]'``)
every lock call makes a span, a child of the caller's current span:
``mpilock.read``, ``mpilock.write`` or ``mpilock.bounded`` from the request to
the release, current during the held section (spans made inside the ``with``
block are its children), and below it ``mpilock.read.wait`` (``.write.wait``,
``.bounded.wait``) from the request to the grant.  A lock nested inside locks
that cover it asks nothing of the server and has no wait span.  Attributes:

- 2.x's: ``mpi.rank``, ``mpi.master``, ``mpilock.nested``, ``mpilock.promoted``
  (write spans only) on the lock span, ``mpi.rank`` on the wait span;
- beyond 2.x: ``mpilock.mode`` (``read``, ``write``, ``bounded``),
  ``mpilock.limit`` (bounded), ``mpilock.keys`` (the keys as the Chrome
  trace's ``args.key`` names them; absent for the default lock),
  ``mpilock.timeout`` (seconds, when one was given) and ``mpilock.single_write``
  (the writer's rank) on a ``single_write`` block's spans.

A ``single_write`` block is a ``mpilock.write`` span on its writer, as in
2.x; the other ranks' wait for the writer at the end of the block is a
``mpilock.single_write.wait`` span, and ``fence.collect()`` a
``mpilock.collect`` span.  An error that leaves a span (``LockTimeout``,
``DeadlockError`` with the cycle in its message, ``FenceError``, an exception
of the ``with`` block) is recorded on it with an error status; exceptions that
are not ``Exception`` s (``KeyboardInterrupt``) end it without, as
OpenTelemetry's own ``start_as_current_span`` does.

Spans go to the global tracer provider (``opentelemetry.trace.set_tracer_provider``),
or to the one given to :func:`configure`.  While that is OpenTelemetry's
default no-op provider, no span is made at all: a lock costs what it costs
without the extra.  Without ``opentelemetry-api`` nothing of OpenTelemetry is
imported and :data:`HOOKS` is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._version import __version__
from .errors import FencedSignal
from .nesting import SPANS
from .server import keys as keyspace
from .server.core import READ, SLOT, WRITE

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from .holder import Holder

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.trace import NoOpTracer, NoOpTracerProvider, ProxyTracerProvider, Status, StatusCode
except ImportError:  # the otel extra is not installed
    AVAILABLE = False
else:
    AVAILABLE = True

T = TypeVar("T")


class _Controller(Protocol):
    """What a lock's span reads of its controller (:class:`~mpilock.controller.WindowController`)."""

    @property
    def _rank(self) -> int: ...
    @property
    def _master(self) -> int: ...
    def _holder(self) -> Holder: ...


class Lock(Protocol):
    """What :meth:`Hooks.enter_lock` reads of a lock (:class:`~mpilock.controller.Lock`; no import: it imports us)."""

    @property
    def _ctrl(self) -> _Controller: ...
    @property
    def _keys(self) -> tuple[bytes, ...]: ...
    @property
    def _mode(self) -> int: ...
    @property
    def _limit(self) -> int: ...
    @property
    def _timeout(self) -> float | None: ...
    def _acquire(self, token: list[Any]) -> None: ...


class _Port(Protocol):
    """What a fence's span reads of its port (:class:`~mpilock.fence.FencePort`)."""

    @property
    def rank(self) -> int: ...
    @property
    def master(self) -> int: ...
    @property
    def held(self) -> Callable[[], dict[bytes, int]]: ...


class Fence(Protocol):
    """What the fence functions read and keep in a fence (:class:`~mpilock.fence.Fence`; no import: it imports us)."""

    _otel: list[Any] | None

    @property
    def writer(self) -> int: ...
    @property
    def access(self) -> bool: ...
    @property
    def _port(self) -> _Port: ...


TRACER_NAME = "mpilock"
"""The instrumentation scope of mpilock's spans (2.x's: ``get_tracer("mpilock", __version__)``)."""

SPAN_NAMES = {READ: "mpilock.read", WRITE: "mpilock.write", SLOT: "mpilock.bounded"}
"""Lock span name by mode; the wait span's is the same with ``.wait``."""

WAIT_NAMES = {mode: f"{name}.wait" for mode, name in SPAN_NAMES.items()}

MODE_NAMES = {READ: "read", WRITE: "write", SLOT: "bounded"}
"""Values of the ``mpilock.mode`` attribute."""

FENCE_WAIT = "mpilock.single_write.wait"
"""Span of a rank other than the writer waiting at the end of a ``single_write`` block."""

COLLECT = "mpilock.collect"
"""Span of ``fence.collect()``."""

_Record = list[Any]
"""An open lock span: ``[span, context token or None, depth]`` (depth: the ``with`` nesting level of its lock)."""


def nesting(held: dict[bytes, int], keys: tuple[bytes, ...], mode: int) -> tuple[bool, bool]:
    """``(nested, promoted)`` of taking ``keys`` in ``mode`` while holding ``held`` (key -> mode).

    Nested: locks this rank holds cover every key, so nothing is asked of the
    server (:data:`~mpilock.nesting.LOCAL`); promoted: a write of a key this
    rank holds for read.  The same decision as ``WindowController._acquire``.
    """
    nested, promoted = True, False
    for key in keys:
        have = held.get(key)
        if have is None:
            nested = False
        elif have == READ and mode == WRITE:
            nested, promoted = False, True
    return nested, promoted


def fail(span: Span, error: BaseException) -> None:
    """Record ``error`` on ``span`` with an error status, if it is an error (not a ``FencedSignal``)."""
    if isinstance(error, Exception) and not isinstance(error, FencedSignal):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _close(stack: list[_Record], error: BaseException | None) -> None:
    """End the innermost span of ``stack``: leave its context, record ``error``, end it, drop it.

    Each step runs even if the one before raised (an exception from a signal
    handler, say), so the span is ended and forgotten whatever happens.
    """
    span, token, _ = stack[-1]
    try:
        if token is not None:
            _context.detach(token)
    finally:
        try:
            if error is not None:
                fail(span, error)
        finally:
            try:
                span.end()
            finally:
                del stack[-1]


class Hooks:
    """Where lock calls make their spans; :data:`HOOKS` is the one the locks use."""

    __slots__ = ("_cache", "_explicit")

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        """Send spans to ``tracer_provider``, or to the global tracer provider if ``None``."""
        self._explicit = tracer_provider
        self._cache: tuple[object, Tracer | None] = (self, None)
        """(provider, its tracer): one tuple, replaced whole, so that threads never see half an update."""

    def tracer(self) -> Tracer | None:
        """Return the tracer for mpilock's spans now, ``None`` while spans would go nowhere (the no-op provider)."""
        provider = self._explicit
        if provider is None:
            provider = _trace._TRACER_PROVIDER if _GLOBAL_SLOT else _trace.get_tracer_provider()
        cache = self._cache
        return cache[1] if provider is cache[0] else self._refresh(provider)

    def _refresh(self, provider: TracerProvider | None) -> Tracer | None:
        """Find the tracer of ``provider`` (``None``: no global provider was set yet) and remember it."""
        seen = provider
        if provider is None:  # maybe one named by OTEL_PYTHON_TRACER_PROVIDER, loaded on first look-up
            provider = _trace.get_tracer_provider()
            seen = _trace._TRACER_PROVIDER if _GLOBAL_SLOT else provider
        tracer: Tracer | None = None
        if not isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
            tracer = provider.get_tracer(TRACER_NAME, __version__)
            if isinstance(tracer, NoOpTracer):  # e.g. the SDK's, with OTEL_SDK_DISABLED=true
                tracer = None
        self._cache = (seen, tracer)
        return tracer

    # -- locks ---------------------------------------------------------------
    def enter_lock(self, lock: Lock, token: list[Any]) -> bool:
        """Take ``lock`` inside its spans; ``False`` (nothing done) if there is no tracer.

        If anything fails after the grant (this code, or a signal handler's
        exception), the lock is released before the exception goes on, as
        ``Lock.__enter__`` does; every span made is ended either way.
        """
        provider = self._explicit  # self.tracer(), inlined: every lock runs this, traced or not
        if provider is None:
            provider = _trace._TRACER_PROVIDER if _GLOBAL_SLOT else _trace.get_tracer_provider()
        cache = self._cache
        tracer = cache[1] if provider is cache[0] else self._refresh(provider)
        if tracer is None:
            return False
        ctrl, mode, keys = lock._ctrl, lock._mode, lock._keys
        nested, promoted = nesting(ctrl._holder().held, keys, mode)
        attributes: dict[str, AttributeValue] = {
            "mpi.rank": ctrl._rank,
            "mpi.master": ctrl._master,
            "mpilock.nested": nested,
            "mpilock.mode": MODE_NAMES[mode],
        }
        if mode == WRITE:
            attributes["mpilock.promoted"] = promoted
        elif mode == SLOT:
            attributes["mpilock.limit"] = lock._limit
        if keys != (keyspace.DEFAULT,):
            attributes["mpilock.keys"] = [keyspace.describe(key) for key in keys]
        if lock._timeout is not None:
            attributes["mpilock.timeout"] = lock._timeout
        spans: list[_Record] = []
        span = tracer.start_span(SPAN_NAMES[mode], attributes=attributes)
        _held(tracer, span, None if nested else WAIT_NAMES[mode], ctrl._rank, lambda: lock._acquire(token), spans, 0)
        token[SPANS] = spans  # the step's: its release ends them
        return True  # on an exception, Lock.__enter__ undoes the acquire (and pops its step) before it goes on


def _held(
    tracer: Tracer, span: Span, wait: str | None, rank: int, take: Callable[[], Any], stack: list[_Record], depth: int
) -> Any:
    """Call ``take`` (an acquire) under ``span`` and a ``wait`` child, then make ``span`` current until its release.

    Returns what ``take`` returned.  On an exception ``span`` is ended with
    the error recorded (the caller gives back what ``take`` took).
    """
    pushed = len(stack)
    inside = _trace.set_span_in_context(span)
    try:
        if wait is None:
            result = take()
        else:
            waiting = tracer.start_span(wait, inside, attributes={"mpi.rank": rank})
            try:
                result = take()
            except BaseException as error:
                fail(waiting, error)
                raise
            finally:
                waiting.end()
        record: _Record = [span, None, depth]
        stack.append(record)
        record[1] = _context.attach(inside)
        return result
    except BaseException as error:
        if len(stack) > pushed:
            _close(stack, error)
        else:
            try:
                fail(span, error)
            finally:
                span.end()
        raise


def exit_lock(spans: list[_Record], error: BaseException | None) -> None:
    """End the span of a ``with`` block whose lock was just released (``error``: what leaves the block).

    Called by ``Lock.__exit__`` after the release, with the step's ``spans``,
    so nothing here can keep a lock held; again after an exception cut it: a
    span already ended is not ended twice.
    """
    if spans:
        _close(spans, error)


# -- fences ------------------------------------------------------------------
def _fence_attributes(fence: Fence) -> dict[str, AttributeValue]:
    port = fence._port
    return {"mpi.rank": port.rank, "mpi.master": port.master, "mpilock.single_write": fence.writer}


def enter_fence(fence: Fence, enter: Callable[[], T]) -> T:
    """Enter ``fence`` with ``enter``: on the writer inside a ``mpilock.write`` span (2.x's), current until the end."""
    tracer = HOOKS.tracer() if HOOKS is not None else None
    if tracer is None or not fence.access:
        return enter()
    port = fence._port
    nested, promoted = nesting(port.held(), (keyspace.DEFAULT,), WRITE)
    attributes = _fence_attributes(fence)
    attributes.update({"mpilock.nested": nested, "mpilock.promoted": promoted, "mpilock.mode": "write"})
    span = tracer.start_span(SPAN_NAMES[WRITE], attributes=attributes)
    stack: list[_Record] = []
    result: T = _held(tracer, span, None if nested else WAIT_NAMES[WRITE], port.rank, enter, stack, 0)
    fence._otel = stack
    return result


def exit_fence(fence: Fence, leave: Callable[[], bool], error: BaseException | None) -> bool:
    """Leave ``fence`` with ``leave``: end the writer's span, or wait for the writer in a span of its own."""
    stack: list[_Record] | None = fence._otel
    if stack:
        fence._otel = None
        try:
            return leave()
        finally:
            _close(stack, error)
    if fence.access:
        return leave()
    return traced(FENCE_WAIT, _fence_attributes(fence), leave)


def traced(name: str, attributes: dict[str, AttributeValue], call: Callable[[], T]) -> T:
    """Run ``call`` in a span ``name`` (a child of the current span), if there is a tracer; its error recorded."""
    tracer = HOOKS.tracer() if HOOKS is not None else None
    if tracer is None:
        return call()
    span = tracer.start_span(name, attributes=attributes)
    try:
        return call()
    except BaseException as error:
        fail(span, error)
        raise
    finally:
        span.end()


def collect(fence: Fence, call: Callable[[], T]) -> T:
    """Run ``fence.collect()``'s ``call`` in a ``mpilock.collect`` span."""
    return traced(COLLECT, _fence_attributes(fence), call)


# -- configuration -----------------------------------------------------------
def configure(tracer_provider: TracerProvider | None = None, *, enabled: bool = True) -> None:
    """Send mpilock's spans to ``tracer_provider`` (``None``: the global one), or switch them off.

    Spans go to the global tracer provider by default; this is for a program
    (or a test) that keeps a provider of its own.  ``enabled=False`` makes no
    spans whatever the provider.  ``ImportError`` if ``opentelemetry-api`` is
    not installed and ``enabled`` is true.
    """
    global HOOKS
    if not enabled:
        HOOKS = None
        return
    if not AVAILABLE:
        raise ImportError("OpenTelemetry spans need opentelemetry-api: pip install 'mpilock-server[otel]'")
    HOOKS = Hooks(tracer_provider)


_GLOBAL_SLOT = AVAILABLE and hasattr(_trace, "_TRACER_PROVIDER")
"""Whether the global provider can be read from the API's module (about 20 ns, not 2 µs as
``get_tracer_provider()`` takes while none is set: it looks for ``OTEL_PYTHON_TRACER_PROVIDER``
in ``os.environ`` every time)."""

HOOKS: Hooks | None = Hooks() if AVAILABLE else None
"""What the locks call to make spans; ``None`` without ``opentelemetry-api`` (or after ``configure(enabled=False)``)."""

__all__ = ["AVAILABLE", "HOOKS", "TRACER_NAME", "Hooks", "configure", "nesting"]

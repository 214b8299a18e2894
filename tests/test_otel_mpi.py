"""OpenTelemetry spans of locks, fences and collects, at 2-3 ranks, caught by the SDK's in-memory exporter.

Every rank has an exporter of its own; ``mpilock.otel.configure`` sends
mpilock's spans to this module's provider (and back to the global one after
the module), so other test files in the same job see no spans.  The names and
attributes checked against mpilock 2.x's are those of its ``__init__.py``
(2.2.1): ``mpilock.read``/``mpilock.write`` with ``mpi.rank``, ``mpi.master``,
``mpilock.nested`` (and ``mpilock.promoted`` on writes), children
``mpilock.read.wait``/``mpilock.write.wait`` with ``mpi.rank``.
"""

import signal

import pytest
from mpi4py import MPI
from mpitools import mpi, wait_until_queued
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import mpilock
from mpilock import otel
from mpilock.nesting import SPANS

COMM = MPI.COMM_WORLD
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
APP = PROVIDER.get_tracer("app")

TWO_X_NAMES = {"mpilock.read", "mpilock.write", "mpilock.read.wait", "mpilock.write.wait"}


@pytest.fixture(autouse=True, scope="module")
def provider():
    otel.configure(PROVIDER)
    try:
        yield PROVIDER
    finally:
        otel.configure()


@pytest.fixture(autouse=True)
def spans():
    EXPORTER.clear()
    yield
    EXPORTER.clear()


def finished(name=None) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if name is None or s.name == name]


def children(parent: ReadableSpan, name=None) -> list[ReadableSpan]:
    return [
        s
        for s in finished(name)
        if s.parent is not None
        and s.parent.span_id == parent.context.span_id
        and s.context.trace_id == parent.context.trace_id
    ]


def one(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [(s.name, dict(s.attributes or {})) for s in spans]
    return spans[0]


def exception_types(span: ReadableSpan) -> list[str]:
    return [str(e.attributes["exception.type"]) for e in span.events if e.name == "exception"]


def assert_error(span: ReadableSpan, error: type[BaseException], text: str = "") -> None:
    assert span.status.status_code is StatusCode.ERROR, (span.name, span.status)
    assert span.status.description.startswith(f"{error.__name__}: "), span.status.description
    assert text in span.status.description, span.status.description
    assert [t.rsplit(".", 1)[-1] for t in exception_types(span)] == [error.__name__]


def nothing_left_held(ctrl, *keys):
    """Every rank takes the keys once more (a leaked lock times out), then nothing is in use."""
    COMM.barrier()
    with ctrl.write(*keys, timeout=20):
        pass
    COMM.barrier()
    assert ctrl.locks() == []
    assert ctrl._holder().held == {}


@mpi(min_ranks=2)
def test_2x_names_attributes_and_parents_under_nesting_and_promotion(ctrl, mpi_ranks):
    rank = ctrl.rank
    with APP.start_as_current_span("job") as job:
        with ctrl.read():
            with ctrl.read():  # nested: covered by the outer read, nothing asked
                pass
            with ctrl.write():  # promoted
                with ctrl.write():  # nested in the write
                    with APP.start_as_current_span("inside"):
                        pass
    assert {s.name for s in finished()} >= TWO_X_NAMES
    assert all(s.end_time is not None and s.status.status_code is StatusCode.UNSET for s in finished())

    outer_read = one(children(finished("job")[0], "mpilock.read"))
    assert outer_read.context.trace_id == job.get_span_context().trace_id
    assert dict(outer_read.attributes) == {
        "mpi.rank": rank,
        "mpi.master": 0,
        "mpilock.nested": False,
        "mpilock.mode": "read",
    }
    assert dict(one(children(outer_read, "mpilock.read.wait")).attributes) == {"mpi.rank": rank}

    inner_read = one(children(outer_read, "mpilock.read"))  # the outer read is current while held
    assert inner_read.attributes["mpilock.nested"] is True
    assert children(inner_read) == []  # a nested lock has no wait span

    promoted = one(children(outer_read, "mpilock.write"))
    assert dict(promoted.attributes) == {
        "mpi.rank": rank,
        "mpi.master": 0,
        "mpilock.nested": False,
        "mpilock.promoted": True,
        "mpilock.mode": "write",
    }
    wait = one(children(promoted, "mpilock.write.wait"))
    assert dict(wait.attributes) == {"mpi.rank": rank}
    assert promoted.start_time <= wait.start_time <= wait.end_time <= promoted.end_time

    nested_write = one(children(promoted, "mpilock.write"))
    assert nested_write.attributes["mpilock.nested"] is True
    assert nested_write.attributes["mpilock.promoted"] is False
    assert one(children(nested_write)).name == "inside"  # user spans in the held section are its children
    assert len(finished()) == 8  # job, inside, 2 reads, 2 writes, a read wait and a write wait


@mpi(min_ranks=2)
def test_keys_bounded_and_timeout_attributes(ctrl, mpi_ranks):
    with ctrl.write("a", ("chunk", 3), timeout=30):
        with ctrl.read("a"):
            pass
    with ctrl.bounded("io", 2):
        pass
    with ctrl.read(["x", "y"]):
        pass
    write = one(finished("mpilock.write"))
    assert write.attributes["mpilock.keys"] == ("'a'", "('chunk', 3)")
    assert write.attributes["mpilock.timeout"] == 30.0
    assert write.parent is None  # no current span: a root
    reads = {s.attributes["mpilock.keys"]: s for s in finished("mpilock.read")}
    assert reads[("'a'",)].attributes["mpilock.nested"] is True
    assert reads[("'a'",)].parent.span_id == write.context.span_id
    assert "mpilock.timeout" not in reads[("'x'", "'y'")].attributes
    assert one(children(reads[("'x'", "'y'")])).name == "mpilock.read.wait"
    bounded = one(finished("mpilock.bounded"))
    assert dict(bounded.attributes) == {
        "mpi.rank": ctrl.rank,
        "mpi.master": 0,
        "mpilock.nested": False,
        "mpilock.mode": "bounded",
        "mpilock.limit": 2,
        "mpilock.keys": ("bounded 'io'",),
    }
    assert one(children(bounded)).name == "mpilock.bounded.wait"


@mpi(min_ranks=2)
def test_a_lock_timeout_is_recorded_on_the_lock_and_its_wait(ctrl, mpi_ranks):
    holder = COMM.size - 1
    if ctrl.rank == holder:
        with ctrl.write("k"):
            COMM.barrier()
            COMM.barrier()
    else:
        COMM.barrier()
        with pytest.raises(mpilock.LockTimeout):
            with ctrl.write("k", timeout=0.05):
                pytest.fail("granted while another rank held the write lock")
        COMM.barrier()
        write = one(finished("mpilock.write"))
        assert write.attributes["mpilock.timeout"] == 0.05
        assert_error(write, mpilock.LockTimeout, "gave up waiting after 0.05 s")
        assert_error(one(children(write, "mpilock.write.wait")), mpilock.LockTimeout)
    nothing_left_held(ctrl, "k")


@mpi(min_ranks=2)
def test_a_deadlock_error_is_recorded_with_the_cycle(ctrl, mpi_ranks):
    if ctrl.rank == 0:
        with ctrl.write("a"):
            COMM.recv(source=1, tag=1)
            with ctrl.write("b"):
                pass
    elif ctrl.rank == 1:
        with ctrl.write("b"):
            COMM.send(None, dest=0, tag=1)
            wait_until_queued(ctrl, "'b'", 0)
            with pytest.raises(mpilock.DeadlockError) as caught:
                with ctrl.write("a"):
                    pass
        refused = one([s for s in finished("mpilock.write") if s.attributes["mpilock.keys"] == ("'a'",)])
        assert_error(refused, mpilock.DeadlockError, str(caught.value))
        assert "rank 0" in refused.status.description and "'b'" in refused.status.description
        event = next(e for e in refused.events if e.name == "exception")
        assert event.attributes["exception.message"] == str(caught.value)
        outer = one([s for s in finished("mpilock.write") if s.attributes["mpilock.keys"] == ("'b'",)])
        assert refused.parent.span_id == outer.context.span_id
        assert outer.status.status_code is StatusCode.UNSET  # the error was caught inside it
    nothing_left_held(ctrl, "a", "b")


@mpi(min_ranks=2)
def test_fences_writer_write_span_others_wait_and_collect(ctrl, mpi_ranks):
    writer = 1
    with APP.start_as_current_span("job") as job:
        with ctrl.single_write(rank=writer) as fence:
            fence.guard()
            with APP.start_as_current_span("writing"):
                fence.share({"n": 3})
        assert fence.collect() == {"n": 3}
    job_id = job.get_span_context().span_id
    collect = one(finished("mpilock.collect"))
    assert collect.parent.span_id == job_id
    assert dict(collect.attributes) == {"mpi.rank": ctrl.rank, "mpi.master": 0, "mpilock.single_write": writer}
    if ctrl.rank == writer:
        write = one(finished("mpilock.write"))
        assert write.parent.span_id == job_id
        assert dict(write.attributes) == {
            "mpi.rank": writer,
            "mpi.master": 0,
            "mpilock.single_write": writer,
            "mpilock.nested": False,
            "mpilock.promoted": False,
            "mpilock.mode": "write",
        }
        assert {s.name for s in children(write)} == {"mpilock.write.wait", "writing"}
        assert finished("mpilock.single_write.wait") == []
    else:
        wait = one(finished("mpilock.single_write.wait"))
        assert wait.parent.span_id == job_id
        assert dict(wait.attributes) == {"mpi.rank": ctrl.rank, "mpi.master": 0, "mpilock.single_write": writer}
        assert finished("mpilock.write") == []
    assert all(s.status.status_code is StatusCode.UNSET for s in finished())


@mpi(min_ranks=2)
def test_a_failed_fence_is_an_error_on_every_rank(ctrl, mpi_ranks):
    writer = 0
    if ctrl.rank == writer:
        with pytest.raises(ValueError, match="no data"):
            with ctrl.single_write() as fence:
                fence.guard()
                raise ValueError("no data")
        assert_error(one(finished("mpilock.write")), ValueError, "no data")
    else:
        with pytest.raises(mpilock.FenceError) as caught:
            with ctrl.single_write() as fence:
                fence.guard()
        wait = one(finished("mpilock.single_write.wait"))
        assert_error(wait, mpilock.FenceError, "ValueError: no data")
        assert str(caught.value) in wait.status.description
    with pytest.raises(mpilock.FenceError):
        fence.collect()
    assert_error(one(finished("mpilock.collect")), mpilock.FenceError, f"failed on rank {writer}")
    nothing_left_held(ctrl)


@mpi(min_ranks=2)
def test_an_exception_of_the_block_is_recorded_and_the_lock_released(ctrl, mpi_ranks):
    with APP.start_as_current_span("job"):
        with pytest.raises(KeyError):
            with ctrl.read("r"):
                with ctrl.write("r"):  # promoted
                    raise KeyError("missing")
    assert_error(one(finished("mpilock.write")), KeyError, "missing")
    assert_error(one(finished("mpilock.read")), KeyError, "missing")
    assert one(finished("mpilock.write.wait")).status.status_code is StatusCode.UNSET
    nothing_left_held(ctrl, "r")


@mpi(min_ranks=2)
def test_tracing_code_failing_after_the_grant_releases_the_lock(ctrl, mpi_ranks, monkeypatch):
    class Broken(Exception):
        pass

    def attach(context):  # as a signal handler's exception would strike there
        raise Broken("attach failed")

    monkeypatch.setattr(otel._context, "attach", attach)
    with pytest.raises(Broken):
        with ctrl.write("t"):
            pytest.fail("the with block ran although __enter__ failed")
    monkeypatch.undo()
    assert ctrl._holder().held == {}
    write = one(finished("mpilock.write"))
    assert_error(write, Broken, "attach failed")
    assert one(children(write, "mpilock.write.wait")).status.status_code is StatusCode.UNSET  # granted
    with ctrl.write("t"):
        step = ctrl._holder().stack[-1]  # this block's acquire: its span lives with it
        assert step[SPANS] and len(step[SPANS]) == 1
    assert step[SPANS] == []
    nothing_left_held(ctrl, "t")


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("error", [Interrupted, KeyboardInterrupt])
@mpi(min_ranks=2)
@pytest.mark.mpi_isolated
def test_an_interrupted_wait_ends_both_spans(ctrl, mpi_ranks, error):
    holder = COMM.size - 1
    if ctrl.rank == holder:
        with ctrl.write():
            COMM.barrier()
            COMM.barrier()
    else:
        COMM.barrier()

        def handler(signum, frame):
            raise error("interrupted by a signal")

        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            with pytest.raises(error):
                with ctrl.write():
                    pytest.fail("granted while another rank held the write lock")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        COMM.barrier()
        write = one(finished("mpilock.write"))
        wait = one(children(write, "mpilock.write.wait"))
        if error is Interrupted:
            assert_error(write, Interrupted, "interrupted by a signal")
            assert_error(wait, Interrupted)
        else:  # not an Exception: ended without an error, as OpenTelemetry's own spans are
            assert write.status.status_code is StatusCode.UNSET and wait.status.status_code is StatusCode.UNSET
        assert wait.end_time - wait.start_time >= 0.15e9
    nothing_left_held(ctrl)


@mpi(min_ranks=2)
def test_no_spans_when_switched_off_and_none_at_all_with_the_noop_provider(ctrl, mpi_ranks):
    from opentelemetry.trace import NoOpTracerProvider

    try:
        otel.configure(enabled=False)
        with ctrl.write():
            pass
        otel.configure(NoOpTracerProvider())
        with ctrl.read():
            step = ctrl._holder().stack[-1]
        assert step[SPANS] is None  # not even the list was made
    finally:
        otel.configure(PROVIDER)
    assert finished() == []
    # A block entered while off and left while on is released without a span; the one inside it has its span.
    lock = ctrl.write("m")
    otel.configure(enabled=False)
    try:
        with lock:
            otel.configure(PROVIDER)
            with lock:
                pass
    finally:
        otel.configure(PROVIDER)
    assert [s.attributes["mpilock.nested"] for s in finished("mpilock.write")] == [True]
    assert ctrl._holder().held == {}
    nothing_left_held(ctrl, "m")

"""Which tests the secondary CI configurations skip: the one list, and why.

Every test runs in the primary configuration (``make test``: MPICH shared
memory, the native server loop, 1-4 ranks).  The secondary ones (8 ranks, Open
MPI, MPICH over TCP, the pure-Python server loop; ``make test-mpi SCOPE=config``)
exist to catch what changes with the MPI library, the transport, the rank count
or the server loop: the wire, the loops, exits and interrupts, fences and
payloads, keys, deadlocks.  The tests below check things none of those can
change, so running them again there costs time and finds nothing.

Each entry is a test function (every parametrization) as ``file::name``.
"""

from __future__ import annotations

import os

SCOPE = os.environ.get("MPILOCK_TEST_SCOPE", "all")
"""``all`` (the default) runs every test; ``config`` leaves out the tests listed here."""

CONFIGURATION_INDEPENDENT: dict[str, str] = {
    # Argument and settings parsing: decided on each rank before any message is sent.
    "test_errors_mpi.py::test_bad_arguments_raise_on_every_rank": "argument checks run before any message",
    "test_misuse_mpi.py::test_integral_types_are_ranks": "argument parsing",
    "test_promises_mpi.py::test_a_master_that_is_not_an_integer_is_a_type_error_on_every_rank": "argument parsing",
    "test_promises_mpi.py::test_inputs_outside_the_contract_are_refused_before_anything_is_sent": "argument checks",
    "test_exits_mpi.py::test_a_malformed_setting_is_named_with_its_form_on_every_rank": "settings parsing",
    # Trace files: written by the client at close(), whatever carried the messages.
    "test_misuse_mpi.py::test_an_unwritable_trace_fails_at_creation_on_every_rank": "trace files",
    "test_promises_mpi.py::test_mpilock_trace_is_read_at_each_sync_and_each_controller_gets_its_own_file": (
        "trace files"
    ),
    # The 1.x/2.x API surface, run as that project ran it; its locks and fences are tested here anyway.
    "test_compat_mpi.py::test_unittest_discover_of_the_compat_suite": "API compatibility (names and signatures)",
    # A pure helper of the tests, no MPI in it.
    "test_stress_mpi.py::test_sweep_finds_overlaps": "a pure helper of the tests",
}


def skipped_here(nodeid: str) -> bool:
    """Whether this configuration leaves the test with pytest node id ``nodeid`` out."""
    if SCOPE == "all":
        return False
    if SCOPE != "config":
        raise ValueError(f"MPILOCK_TEST_SCOPE must be 'all' or 'config', not {SCOPE!r}")
    path, _, name = nodeid.partition("::")
    return f"{os.path.basename(path)}::{name.split('[')[0]}" in CONFIGURATION_INDEPENDENT

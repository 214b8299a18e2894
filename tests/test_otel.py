"""mpilock.otel without MPI: which provider makes spans, the nesting decision, and life without the API.

The spans of real locks are checked at 2-3 ranks by tests/test_otel_mpi.py.
Tests that set OpenTelemetry's global tracer provider (which can be set only
once per process) run in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import launch
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider

from mpilock import otel
from mpilock.server.core import READ, SLOT, WRITE
from mpilock.server.keys import DEFAULT

FAKE_ERROR = "opentelemetry is not installed here (fake package of tests/test_otel.py)"


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env or launch.environment(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("held", "keys", "mode", "expected"),
    [
        ({}, (DEFAULT,), READ, (False, False)),
        ({DEFAULT: READ}, (DEFAULT,), READ, (True, False)),
        ({DEFAULT: WRITE}, (DEFAULT,), READ, (True, False)),
        ({DEFAULT: WRITE}, (DEFAULT,), WRITE, (True, False)),
        ({DEFAULT: READ}, (DEFAULT,), WRITE, (False, True)),
        ({b"a": READ}, (b"a", b"b"), READ, (False, False)),
        ({b"a": READ, b"b": WRITE}, (b"a", b"b"), READ, (True, False)),
        ({b"a": READ, b"b": WRITE}, (b"a", b"b"), WRITE, (False, True)),
        ({b"a": READ}, (b"a", b"c"), WRITE, (False, True)),
        ({b"#x": SLOT}, (b"#x",), SLOT, (True, False)),
        ({b"a": WRITE}, (b"#x",), SLOT, (False, False)),
    ],
)
def test_nesting_is_the_acquire_s_decision(held, keys, mode, expected):
    assert otel.nesting(held, keys, mode) == expected


def test_no_tracer_for_the_noop_provider_nor_a_disabled_sdk(monkeypatch):
    assert otel.Hooks(NoOpTracerProvider()).tracer() is None
    sdk = TracerProvider()
    tracer = otel.Hooks(sdk).tracer()
    assert tracer is not None and tracer.instrumentation_info.name == "mpilock"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert otel.Hooks(TracerProvider()).tracer() is None


def test_the_global_provider_is_picked_up_when_it_is_set_later():
    result = python(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from mpilock import otel

        hooks = otel.Hooks()
        assert hooks.tracer() is None, "no global provider yet: the no-op one"
        assert hooks.tracer() is None
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        tracer = hooks.tracer()
        assert tracer is not None and tracer.resource is provider.resource, tracer
        assert hooks.tracer() is tracer  # cached
        assert otel.HOOKS.tracer() is not None
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_provider_named_in_the_environment_is_loaded():
    env = launch.environment()
    env["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"
    result = python(
        """
        from opentelemetry.sdk.trace import TracerProvider
        from mpilock import otel

        tracer = otel.HOOKS.tracer()
        assert tracer is not None, "OTEL_PYTHON_TRACER_PROVIDER was not loaded"
        print("ok")
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_without_the_api_nothing_of_it_is_imported_and_the_hooks_are_none(tmp_path: Path):
    fake = tmp_path / "fake" / "opentelemetry"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ImportError({FAKE_ERROR!r})\n")
    env = launch.environment()
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env.get("PYTHONPATH", "")])
    result = python(
        f"""
        import sys
        try:
            import opentelemetry
        except ImportError as err:
            assert str(err) == {FAKE_ERROR!r}, err  # the fake works, or this test proves nothing
        from mpilock import otel
        assert otel.HOOKS is None and not otel.AVAILABLE
        assert not [m for m in sys.modules if m.startswith("opentelemetry.")], sorted(sys.modules)
        otel.configure(enabled=False)
        try:
            otel.configure()
        except ImportError as err:
            print(err)
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'mpilock-server[otel]'" in result.stdout

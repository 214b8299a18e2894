"""Every environment variable is parsed once, in one place, with an error that names it and its form."""

import re
from pathlib import Path

import pytest

from mpilock.errors import ConfigError, MpilockError
from mpilock.server import settings

VARIABLES_TABLE = Path(__file__).resolve().parent.parent / "docs" / "cluster.md"
"""Where the table of environment variables is (Running on a cluster: Environment variables)."""


def test_defaults_when_nothing_is_set():
    values = settings.load({})
    assert values.wait_report == 60.0 and values.sites is True and values.trace is None
    assert values.spin == 0.0002 and values.max_sleep == 0.001


@pytest.mark.parametrize(
    ("variable", "good", "field", "expected"),
    [
        ("MPILOCK_SPIN", "0.001", "spin", 0.001),
        ("MPILOCK_MAX_SLEEP", "2e-3", "max_sleep", 0.002),
        ("MPILOCK_WAIT_REPORT", "0", "wait_report", 0.0),
        ("MPILOCK_SITES", "off", "sites", False),
        ("MPILOCK_SITES", "Yes", "sites", True),
        ("MPILOCK_TRACE", "out/t.json", "trace", "out/t.json"),
        ("MPILOCK_SWITCH_INTERVAL", " 0 ", "switch_interval", 0.0),
    ],
)
def test_good_values(variable, good, field, expected):
    assert getattr(settings.load({variable: good}), field) == expected


@pytest.mark.parametrize(
    ("variable", "bad"),
    [
        ("MPILOCK_SPIN", "2ms"),
        ("MPILOCK_SPIN", "abc"),
        ("MPILOCK_MAX_SLEEP", "-1"),
        ("MPILOCK_MAX_SLEEP", "0"),
        ("MPILOCK_CONTENDED_SLEEP", "nan"),
        ("MPILOCK_CLIENT_SPIN", "inf"),
        ("MPILOCK_WAIT_REPORT", "one minute"),
        ("MPILOCK_SITES", "2"),
    ],
)
def test_bad_values_name_the_variable_and_its_form(variable, bad):
    with pytest.raises(ConfigError) as info:
        settings.load({variable: bad})
    text = str(info.value)
    assert f"{variable}={bad!r}" in text and settings.VARIABLES[variable].form in text
    assert isinstance(info.value, MpilockError) and isinstance(info.value, ValueError)


def test_the_docs_document_every_variable():
    documented = set(re.findall(r"^\| `(MPILOCK_[A-Z_]+)` \|", VARIABLES_TABLE.read_text(), re.MULTILINE))
    ignored = {"MPILOCK_PUMP"}  # mpilock 2.x's, documented as ignored
    assert documented - ignored == set(settings.VARIABLES), documented ^ set(settings.VARIABLES)

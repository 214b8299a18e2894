"""Sphinx configuration of mpilock's documentation site (``make docs``; Read the Docs: .readthedocs.yaml).

The pages are Markdown (MyST); the API reference is generated from the
docstrings by autodoc, which imports mpilock and with it mpi4py, so the build
needs an MPI library (the ``mpich`` extra brings one).
"""

from __future__ import annotations

# The installed mpilock (make docs: the venv's editable install, whose import hook maps
# server/ to mpilock.server; Read the Docs: the package installed from the checkout).
from mpilock import __version__

project = "mpilock"
author = "the mpilock developers"
copyright = "the mpilock developers"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: anchors for headings down to level 3, so pages link to each other's sections.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# autodoc: members in source order, the types in the signatures, defaults as written in the source.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"mpilock {release}"

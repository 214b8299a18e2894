"""Build-time step: the package index page gets README.md without its repository-relative pictures.

Everything else is configured in pyproject.toml.  The README shows
``docs/timeline.png`` by a path relative to the repository; the project has no
public URL to make that absolute, and a package index cannot resolve the
relative path, so the long description names the file instead of showing a
broken image.
"""

import re
from pathlib import Path

from setuptools import setup

LOCAL_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<path>(?![a-z][a-z0-9+.-]*://)[^)\s]+)\)[ \t]*$", re.MULTILINE)
"""A Markdown image alone on its line whose target is not an absolute URL."""


def long_description(readme: Path) -> str:
    """Return ``readme`` with every repository-relative picture replaced by a line that names its file."""
    text = readme.read_text(encoding="utf-8")
    return LOCAL_IMAGE.sub(r"*Picture: \g<alt> (`\g<path>` in the source distribution).*", text)


setup(
    long_description=long_description(Path(__file__).resolve().parent / "README.md"),
    long_description_content_type="text/markdown",
)

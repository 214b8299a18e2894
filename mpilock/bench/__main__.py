"""``python -m mpilock.bench``: run the benchmark (see :mod:`mpilock.bench`)."""

import sys

from .cli import main

sys.exit(main())

"""Mistakes mpilock's types must catch: ``mypy --strict`` has to fail on this file, and only as marked.

Every line that ends in ``# expect: CODE`` must get exactly one mypy error
with that code, and no other line may get any (tests/test_typing.py checks
it).  If a type went back to ``Any``, its line would pass and the test fail.
Never run: it is not a program.
"""

from __future__ import annotations

import mpilock
from mpilock import sync

ctrl = sync()

with ctrl.single_write() as fence:
    fence.gaurd()  # expect: attr-defined
    fence.share(1)
fence.colect()  # expect: attr-defined

with ctrl.single_write(handle="out.h5") as target:
    target.upper()  # expect: union-attr

with ctrl.read(timeout="1s"):  # expect: arg-type
    pass

ctrl.single_write(rank="0")  # expect: call-overload

stats = ctrl.stats()
stats["rank"]  # expect: typeddict-item
row = stats["ranks"][0]
row["wait_p95"]  # expect: typeddict-item
row["reads"] + "1"  # expect: operator

mpilock.synk()  # expect: attr-defined
closed: str = ctrl.closed  # expect: assignment

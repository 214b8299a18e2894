"""The printed table: one loop's rows, or every loop's side by side with its results, and the targets across loops.

Each row shows its figure, its ratio to the floor, and where the issue sets one
a target with PASS or MISS.
"""

from __future__ import annotations

import os
import sys

from .common import US, Row


def fmt(value: float, unit: str) -> str:
    """``value`` in ``unit`` as the table shows it."""
    if unit == "us":
        return f"{value / US:,.1f} µs"
    if unit == "ms":
        return f"{value * 1e3:,.2f} ms"
    if unit == "%":
        return f"{value * 100:.2f} %"
    if unit == "MiB":
        return f"{value / 2**20:,.1f} MiB"
    if unit == "s":
        return f"{value:,.1f} s"
    if unit == "keys":
        return f"{value:,.0f} keys"
    if unit == "findings":
        return f"{value:,.0f} findings"
    return f"{value:,.0f} /s"


def print_table(rows: list[Row], header: list[str]) -> None:
    """Print the rows as a fixed-width table under ``header`` lines."""
    width = max(len(r.name) for r in rows)
    for line in header:
        print(line)
    print(f"{'metric':<{width}}  {'median':>12}  {'x floor':>8}  {'target':<14}  result")
    print("-" * (width + 48))
    for r in rows:
        ratio = f"{r.ratio:.1f}" if r.ratio is not None else ""
        result = "" if r.ok is None else ("PASS" if r.ok else "MISS")
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.name:<{width}}  {fmt(r.value, r.unit):>12}  {ratio:>8}  {r.target:<14}  {result}{note}")
    sys.stdout.flush()


def transport() -> str:
    """How this job's ranks talk, as MPICH's environment says: shared memory, or a netmod without it."""
    if os.environ.get("MPIR_CVAR_NOLOCAL") == "1" or os.environ.get("FI_PROVIDER"):
        return f"netmod ({os.environ.get('FI_PROVIDER', 'default provider')}, no shared memory)"
    return "shared memory"


def print_loops(tables: dict[str, list[Row]], header: list[str]) -> None:
    """Print the rows of every loop side by side (matched by name), each with its ratio and result.

    With both loops, the native loop's contended write throughput is also
    judged against the issue's target: at least 3x the python loop's.
    """
    names = list(dict.fromkeys(r.name for rows in tables.values() for r in rows))
    found = {which: {r.name: r for r in rows} for which, rows in tables.items()}
    if "native" in found and "python" in found:
        for name, mine in found["native"].items():
            other = found["python"].get(name)
            if name.startswith("contended write() throughput") and other is not None:
                mine.target, mine.ok = "≥ 3x python", mine.value >= 3 * other.value
    width = max(len(n) for n in names)
    for line in header:
        print(line)
    columns = "".join(f"  {which:>12}  {'x floor':>8}  {'result':<6}" for which in tables)
    print(f"{'metric':<{width}}{columns}  {'target':<14}  note")
    print("-" * (width + 34 * len(tables) + 24))
    for name in names:
        cells = ""
        target = note = ""
        for which in tables:
            row = found[which].get(name)
            if row is None:
                cells += f"  {'':>12}  {'':>8}  {'':<6}"
                continue
            ratio = f"{row.ratio:.1f}" if row.ratio is not None else ""
            result = "" if row.ok is None else ("PASS" if row.ok else "MISS")
            cells += f"  {fmt(row.value, row.unit):>12}  {ratio:>8}  {result:<6}"
            target = target or row.target
            note = note or row.note
        print(f"{name:<{width}}{cells}  {target:<14}  {note}")
    sys.stdout.flush()

"""Draw the lock timeline of a Chrome trace written by mpilock.

Run a program with tracing on (``sync(trace=path)`` or ``MPILOCK_TRACE=path``),
then turn the trace into a picture::

    python -m mpilock.plot trace.json -o timeline.png

Each rank gets one row; time runs left to right in milliseconds since the first
lock request.  Waiting for a lock, holding the read lock and holding the write
lock have their own colours.  In a trace of keyed locks (spans with
``args.key``), the holds of the ``TOP_KEYS`` keys with the most total wait get
a colour each (a read hold a lighter shade of it), the holds of every other key
one grey, and the command prints a table of those keys' waits and holds
(:func:`key_summary`), so that a run over hundreds of keys stays readable.
Needs matplotlib (the ``plot`` extra) but no MPI; it is imported only here
and drawn with the non-interactive Agg backend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .table import format_rows

COLOURS: dict[str, str] = {
    "waiting": "#f4b942",
    "reading": "#3a7dc9",
    "writing": "#d1402f",
    "slot": "#8e6bbf",
}
"""Colour of each state on the timeline (holds of the default lock; ``slot``: a place of a bounded key)."""

KEY_COLOURS = ("#1b9e77", "#e7298a", "#66a61e", "#7570b3", "#a6761d", "#17becf", "#bcbd22", "#34495e")
"""Colours of the keys with the most total wait, in that order (distinct from :data:`COLOURS`)."""
OTHER_COLOUR = "#b5b5b5"
"""Colour of the holds of every other key."""
TOP_KEYS = len(KEY_COLOURS)
"""How many keys get a colour (and a row of :func:`key_summary`) of their own; the rest are merged."""
OTHER_KEYS = "(other keys)"
READ_SHADE = 0.45
"""Opacity of a keyed read hold: a lighter shade of its key's colour."""

_STATE_OF_NAME = {
    "wait read": "waiting",
    "wait write": "waiting",
    "wait slot": "waiting",
    "read": "reading",
    "write": "writing",
    "slot": "slot",
}
_STATE_NAMES = {
    "waiting": "waiting for a lock",
    "reading": "read lock held",
    "writing": "write lock held",
    "slot": "bounded place held",
}


@dataclass(frozen=True)
class Span:
    """One interval of one rank's timeline, in milliseconds since the trace start."""

    rank: int
    state: str
    """``"waiting"``, ``"reading"``, ``"writing"`` or ``"slot"``."""
    start: float
    duration: float
    name: str
    """The trace event's own name, e.g. ``"wait write"``."""
    key: str | None = None
    """The lock's key as the trace names it (``'out/part-17.h5'``), ``None`` for the default lock."""


@dataclass
class KeyRow:
    """What one key (or the merged rest) did in a trace; times in milliseconds."""

    key: str
    waits: int = 0
    """Waits that took any time (an immediate grant is not a wait)."""
    wait_total: float = 0.0
    wait_max: float = 0.0
    holds: int = 0
    hold_total: float = 0.0
    keys: int = 1
    """How many keys the row stands for (more than one for the merged rest)."""


@dataclass
class Drawn:
    """What :func:`plot_timeline` put in its legend."""

    labels: list[str] = field(default_factory=list)
    """Every legend entry, in order."""
    keys: list[str] = field(default_factory=list)
    """The keys that got a colour of their own, then :data:`OTHER_KEYS` if any key was merged."""


def load_spans(trace: dict[str, Any] | list[Any]) -> tuple[list[Span], dict[int, str]]:
    """Return the spans and rank labels of a Chrome trace document (an object or a bare event list).

    Complete events (``"ph": "X"``) whose name mpilock writes become spans,
    with the key of their ``args`` (traces of mpilock before keyed locks have
    none); other events are ignored.  Labels come from ``thread_name`` metadata.
    """
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    spans: list[Span] = []
    labels: dict[int, str] = {}
    for event in events:
        if not isinstance(event, dict):
            continue
        tid = int(event.get("tid", 0))
        if event.get("ph") == "M" and event.get("name") == "thread_name":
            labels[tid] = str(event.get("args", {}).get("name", f"rank {tid}"))
        elif event.get("ph") == "X" and event.get("name") in _STATE_OF_NAME:
            start = float(event["ts"]) / 1000.0
            duration = max(0.0, float(event.get("dur", 0.0)) / 1000.0)
            args = event.get("args")
            key = args.get("key") if isinstance(args, dict) else None
            name = str(event["name"])
            spans.append(Span(tid, _STATE_OF_NAME[name], start, duration, name, None if key is None else str(key)))
    return spans, labels


def key_summary(spans: Sequence[Span], top: int = TOP_KEYS) -> list[KeyRow]:
    """Per-key waits and holds of ``spans``: the ``top`` keys with the most total wait, then the rest merged.

    Ties (keys nobody waited for) go to the key held longest.  The merged row,
    :data:`OTHER_KEYS`, is there only if some key did not fit.  Spans of the
    default lock are not counted.
    """
    rows: dict[str, KeyRow] = {}
    for span in spans:
        if span.key is None:
            continue
        row = rows.get(span.key)
        if row is None:
            row = rows[span.key] = KeyRow(span.key)
        _count(row, span)
    ordered = sorted(rows.values(), key=lambda r: (-r.wait_total, -r.hold_total, r.key))
    if len(ordered) <= top:
        return ordered
    rest = KeyRow(OTHER_KEYS, keys=0)
    for row in ordered[top:]:
        rest.waits += row.waits
        rest.wait_total += row.wait_total
        rest.wait_max = max(rest.wait_max, row.wait_max)
        rest.holds += row.holds
        rest.hold_total += row.hold_total
        rest.keys += 1
    return [*ordered[:top], rest]


def _count(row: KeyRow, span: Span) -> None:
    if span.state == "waiting":
        if span.duration > 0:
            row.waits += 1
            row.wait_total += span.duration
            row.wait_max = max(row.wait_max, span.duration)
    else:
        row.holds += 1
        row.hold_total += span.duration


def format_key_summary(rows: Sequence[KeyRow]) -> str:
    """Format the rows of :func:`key_summary` as a table for people."""
    return format_rows(
        ("key", "waits", "total wait", "longest wait", "holds", "total held"),
        [
            (
                f"{row.key} ({row.keys} keys)" if row.key == OTHER_KEYS else row.key,
                str(row.waits),
                f"{row.wait_total:,.2f} ms",
                f"{row.wait_max:,.2f} ms",
                str(row.holds),
                f"{row.hold_total:,.2f} ms",
            )
            for row in rows
        ],
    )


def read_trace(path: str | os.PathLike[str]) -> dict[str, Any] | list[Any]:
    """Parse the JSON trace file at ``path``."""
    with open(path, encoding="utf-8") as f:
        document: dict[str, Any] | list[Any] = json.load(f)
    return document


def plot_timeline(
    spans: Sequence[Span],
    output: str | os.PathLike[str],
    *,
    labels: dict[int, str] | None = None,
    title: str | None = None,
    width: float = 12.0,
    dpi: int = 150,
    top: int = TOP_KEYS,
) -> Drawn:
    """Draw ``spans`` as a per-rank timeline and save it to ``output`` (format from the suffix).

    Spans narrower than one pixel are widened to one pixel so that every lock
    of the run stays visible (waits of zero length, immediate grants, are not
    drawn); the legend counts the spans of each state.  Holds of keyed locks
    are coloured by key: the ``top`` keys of :func:`key_summary` one colour
    each, every other key grey; the legend names those keys (at most ``top``
    + 1 entries) next to the states.  Returns what the legend shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    labels = dict(labels or {})
    ranks = sorted({s.rank for s in spans} | set(labels))
    end = max((s.start + s.duration for s in spans), default=1.0) or 1.0
    height = 1.2 + 0.45 * max(1, len(ranks))
    fig, ax = plt.subplots(figsize=(width, height), dpi=dpi)
    pixel = end / (width * dpi * 0.8)  # one pixel of the axes, in ms
    row = {rank: i for i, rank in enumerate(ranks)}
    summary = key_summary(spans, top)
    own = [r.key for r in summary if r.key != OTHER_KEYS]
    colour_of = {key: KEY_COLOURS[i % len(KEY_COLOURS)] for i, key in enumerate(own)}

    def colour(span: Span) -> tuple[str, float]:
        """Colour and opacity of a hold: by key for a keyed lock, by state for the default lock."""
        if span.key is None:
            return COLOURS[span.state], 1.0
        return colour_of.get(span.key, OTHER_COLOUR), READ_SHADE if span.state == "reading" else 1.0

    counts = dict.fromkeys(COLOURS, 0)
    for state in COLOURS:  # holds are drawn over waits
        chosen = [s for s in spans if s.state == state]
        counts[state] = len(chosen)
        groups: dict[tuple[int, str, float], list[tuple[float, float]]] = {}
        for s in chosen:
            if s.duration > 0 or state != "waiting":  # a wait of zero length is an immediate grant: nothing to see
                fill, alpha = (COLOURS[state], 1.0) if state == "waiting" else colour(s)
                groups.setdefault((s.rank, fill, alpha), []).append((s.start, max(s.duration, pixel)))
        inset = 0.3 if state == "waiting" else 0.4
        for (rank, fill, alpha), ranges in groups.items():
            ax.broken_barh(ranges, (row[rank] - inset, 2 * inset), facecolors=fill, edgecolor="none", alpha=alpha)
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([labels.get(rank, f"rank {rank}") for rank in ranks])
    ax.set_ylim(-0.7, len(ranks) - 0.3)
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.01)
    ax.set_xlabel("time since first lock request (ms)")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    keyed = any(s.key is not None for s in spans)
    if not keyed:
        handles = [
            Patch(facecolor=COLOURS[state], label=f"{_STATE_NAMES[state]} ({counts[state]})")
            for state in ("waiting", "reading", "writing")
        ]
        ax.legend(
            handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False, fontsize="small"
        )
    else:  # beside the axes: the states, then one entry per key of the summary
        handles = [Patch(facecolor=COLOURS["waiting"], label=f"{_STATE_NAMES['waiting']} ({counts['waiting']})")]
        for state in ("reading", "writing"):
            count = sum(1 for s in spans if s.state == state and s.key is None)
            if count:
                handles.append(Patch(facecolor=COLOURS[state], label=f"{_STATE_NAMES[state]}, default lock ({count})"))
        for entry in summary:
            if entry.key == OTHER_KEYS:
                text = f"{entry.keys} other keys: waited {entry.wait_total:,.1f} ms"
                handles.append(Patch(facecolor=OTHER_COLOUR, label=text))
            else:
                text = f"{entry.key}: waited {entry.wait_total:,.1f} ms"
                handles.append(Patch(facecolor=colour_of[entry.key], label=text))
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            fontsize="small",
            title="key colours: most total wait first\n(a read hold is a lighter shade)",
            title_fontsize="small",
        )
    ax.set_title(title or "mpilock lock timeline", loc="left")
    fig.tight_layout()
    fig.savefig(output, bbox_inches="tight" if keyed else None)
    plt.close(fig)
    return Drawn(
        [str(h.get_label()) for h in handles],
        [*own, *([OTHER_KEYS] if any(r.key == OTHER_KEYS for r in summary) else [])],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m mpilock.plot TRACE.json -o timeline.png``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m mpilock.plot", description="Draw the per-rank lock timeline of an mpilock Chrome trace."
    )
    parser.add_argument("trace", help="trace JSON written by sync(trace=...) or MPILOCK_TRACE")
    parser.add_argument("-o", "--output", default="timeline.png", help="image to write (default: %(default)s)")
    parser.add_argument("--title", default=None, help="title of the plot")
    parser.add_argument("--width", type=float, default=12.0, help="width in inches (default: %(default)s)")
    parser.add_argument("--dpi", type=int, default=150, help="resolution (default: %(default)s)")
    parser.add_argument(
        "--top",
        type=int,
        default=TOP_KEYS,
        help="keys with a colour of their own, by total wait (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        spans, labels = load_spans(read_trace(args.trace))
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"mpilock.plot: cannot read {args.trace}: {err}", file=sys.stderr)
        return 1
    if not spans:
        print(f"mpilock.plot: {args.trace} has no lock spans", file=sys.stderr)
        return 1
    if args.top < 1:
        print("mpilock.plot: --top must be at least 1", file=sys.stderr)
        return 1
    try:
        plot_timeline(spans, args.output, labels=labels, title=args.title, width=args.width, dpi=args.dpi, top=args.top)
    except ImportError:
        print("mpilock.plot: needs matplotlib (pip install 'mpilock-server[plot]')", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {len(spans)} spans on {len({s.rank for s in spans})} ranks")
    summary = key_summary(spans, args.top)
    if summary:
        keys = sum(row.keys for row in summary)
        print(f"\n{keys} keys; the {min(args.top, keys)} with the most total wait:")
        print(format_key_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

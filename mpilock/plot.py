"""Draw the lock timeline of a Chrome trace written by mpilock.

Run a program with tracing on (``sync(trace=path)`` or ``MPILOCK_TRACE=path``),
then turn the trace into a picture::

    python -m mpilock.plot trace.json -o timeline.png

Each rank gets one row; time runs left to right in milliseconds since the first
lock request.  Waiting for a lock, holding the read lock and holding the write
lock have their own colours.  Needs matplotlib (the ``plot`` extra) but no MPI; it is
imported only here and drawn with the non-interactive Agg backend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

COLOURS: dict[str, str] = {
    "waiting": "#f4b942",
    "reading": "#3a7dc9",
    "writing": "#d1402f",
}
"""Colour of each state on the timeline."""

_STATE_OF_NAME = {
    "wait read": "waiting",
    "wait write": "waiting",
    "read": "reading",
    "write": "writing",
}


@dataclass(frozen=True)
class Span:
    """One interval of one rank's timeline, in milliseconds since the trace start."""

    rank: int
    state: str
    """``"waiting"``, ``"reading"`` or ``"writing"``."""
    start: float
    duration: float
    name: str
    """The trace event's own name, e.g. ``"wait write"``."""


def load_spans(trace: dict[str, Any] | list[Any]) -> tuple[list[Span], dict[int, str]]:
    """Return the spans and rank labels of a Chrome trace document (an object or a bare event list).

    Complete events (``"ph": "X"``) whose name mpilock writes become spans;
    other events are ignored.  Labels come from ``thread_name`` metadata.
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
            spans.append(Span(tid, _STATE_OF_NAME[event["name"]], start, duration, str(event["name"])))
    return spans, labels


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
) -> None:
    """Draw ``spans`` as a per-rank timeline and save it to ``output`` (format from the suffix).

    Spans narrower than one pixel are widened to one pixel so that every lock
    of the run stays visible (waits of zero length, immediate grants, are not
    drawn); the legend counts the spans of each state.
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
    counts = dict.fromkeys(COLOURS, 0)
    for state in COLOURS:  # holds are drawn over waits
        chosen = [s for s in spans if s.state == state]
        counts[state] = len(chosen)
        by_rank: dict[int, list[tuple[float, float]]] = {}
        for s in chosen:
            if s.duration > 0 or state != "waiting":  # a wait of zero length is an immediate grant: nothing to see
                by_rank.setdefault(s.rank, []).append((s.start, max(s.duration, pixel)))
        inset = 0.3 if state == "waiting" else 0.4
        for rank, ranges in by_rank.items():
            ax.broken_barh(ranges, (row[rank] - inset, 2 * inset), facecolors=COLOURS[state], edgecolor="none")
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([labels.get(rank, f"rank {rank}") for rank in ranks])
    ax.set_ylim(-0.7, len(ranks) - 0.3)
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.01)
    ax.set_xlabel("time since first lock request (ms)")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    names = {"waiting": "waiting for a lock", "reading": "read lock held", "writing": "write lock held"}
    handles = [Patch(facecolor=COLOURS[state], label=f"{names[state]} ({counts[state]})") for state in COLOURS]
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False, fontsize="small")
    ax.set_title(title or "mpilock lock timeline", loc="left")
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)


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
    args = parser.parse_args(argv)
    try:
        spans, labels = load_spans(read_trace(args.trace))
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"mpilock.plot: cannot read {args.trace}: {err}", file=sys.stderr)
        return 1
    if not spans:
        print(f"mpilock.plot: {args.trace} has no lock spans", file=sys.stderr)
        return 1
    try:
        plot_timeline(spans, args.output, labels=labels, title=args.title, width=args.width, dpi=args.dpi)
    except ImportError:
        print("mpilock.plot: needs matplotlib (pip install 'mpilock-server[plot]')", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {len(spans)} spans on {len({s.rank for s in spans})} ranks")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How one acquire changed a rank's lock state, so that its release undoes exactly that."""

from __future__ import annotations

Taken = tuple[tuple[bytes, ...], tuple[bytes, ...]]
"""``(acquired, promoted)``: keys the server granted for this acquire (released at its end), and keys
this rank held for read that it now holds for write (turned back into read locks at its end)."""

LOCAL: Taken = ((), ())
"""Nested inside locks that already cover it: nothing was asked of the server, nothing to undo."""

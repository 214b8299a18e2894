"""How one acquire changed a rank's lock state, so its release undoes exactly that."""

LOCAL = "local"
"""Nested inside a lock that already covers it: no message to the server."""
ACQUIRED = "acquired"
"""The outermost acquire: the server granted it and must be told on release."""
PROMOTED = "promoted"
"""A write inside a read: the read was released, so release re-acquires it."""

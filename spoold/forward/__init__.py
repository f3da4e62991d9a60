"""Forwarding the spool upstream: coalescing operations, the server's limits on them,
the drain loop and the presence beacon."""

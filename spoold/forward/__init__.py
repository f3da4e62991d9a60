"""Forwarding the spool upstream: coalescing operations and the drain loop."""

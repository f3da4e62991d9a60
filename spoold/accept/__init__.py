"""Accepting writes: the accept thread that spools each operation and records it in the
runs index before the agent's answer (the first stage: accept -> spool -> forward)."""

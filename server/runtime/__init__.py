"""The daemon runtime both daemons share: settings loading, logs, TLS, systemd notify, serving,
and the group-commit worker thread both daemons' writers run on (``group_commit``).

Depends on nothing of either daemon's own modules (an import-linter contract checks it).
"""

"""The daemon runtime both daemons share: settings loading, logs, TLS, systemd notify, serving.

Depends on nothing of either daemon's own modules (an import-linter contract checks it).
"""

"""SQLite helpers both daemons share: one connection recipe, one error classifier, the
version check made at start-up.

Nothing here knows either daemon's schema or files; both import it (the import
contracts in pyproject.toml keep it free of the server's storage and HTTP layers).
"""

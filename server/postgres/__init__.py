"""The central server's PostgreSQL backend (issue 13): a database URL, numbered migrations
and the run operations with the semantics of the SQLite backend (``server.storage``).

All SQL of this backend lives in this package, as all SQLite SQL lives in
``server.storage``; it imports nothing of the web layer.
"""

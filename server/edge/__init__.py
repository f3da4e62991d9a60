"""The HTTP edge both daemons share: JSON responses, the error boundary, request reading, docs.

It knows neither daemon: nothing of the server's storage, endpoints, app or config, nor of spoold.
"""

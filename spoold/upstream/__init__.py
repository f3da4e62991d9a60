"""Talking to the central server: the HTTP client and its retry policy."""

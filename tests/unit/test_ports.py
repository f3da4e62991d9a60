"""The test harness never hands the same port to two daemons of one test."""

from __future__ import annotations

import socket

from ports import free_port


def test_free_port_never_repeats_and_is_bindable() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # nothing listens there

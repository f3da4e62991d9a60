"""Free ports on 127.0.0.1 for the daemons a test starts, never the same one twice.

Binding port 0 and closing the socket lets the kernel hand the same port out again at
the next call: a test that asks for a server port and then a sidecar port once got one
port for both, so spoold forwarded to itself and the "server" it waited for was the
sidecar. Remembering what this process handed out rules that out.
"""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()
_MAX_ATTEMPTS = 1000


def free_port() -> int:
    """A port nothing listens on now, and one this test process has not handed out before."""
    for _ in range(_MAX_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no fresh port on 127.0.0.1 after {_MAX_ATTEMPTS} attempts")

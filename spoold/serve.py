"""``spoold serve``: run the sidecar until it is stopped.

Apart from ``spoold.__main__`` so that its imports (aiohttp, the app, the contract: ~0.3 s)
come after ``spoold.spool.prescan`` has started reading the spool: the two overlap.
"""

from __future__ import annotations

import sys

from server.runtime import daemon
from server.runtime.exposure import Exposure, warn_if_upstream_in_clear
from server.runtime.logs import configure_logging
from server.runtime.tls import TLSSetupError, listener_context, upstream_context
from server.sqlite.version import SqliteTooOld, check_sqlite_version
from spoold.app import create_app
from spoold.config import SpooldConfig
from spoold.memory import fix_mmap_threshold

#: GIL switch interval. The drainer's worker threads decode, fold and encode whole
#: batches; at the default 5 ms each of the event loop's syscalls can wait that long
#: for the GIL to come back, which is what agents' requests feel during a big drain.
GIL_SWITCH_INTERVAL_S = 0.001


def serve(config: SpooldConfig) -> int:
    try:
        listener = listener_context(config.tls_cert_file, config.tls_key_file)
        upstream = upstream_context(config.upstream_ca_file)
    except TLSSetupError as exc:
        print(f"spoold: TLS configuration error: {exc}", file=sys.stderr)
        return 2
    try:  # before the spool is created: an old library fails at the first dead letter
        check_sqlite_version("spoold", "INSERT ... RETURNING in its dead-letter store")
    except SqliteTooOld as exc:
        print(f"spoold: {exc}", file=sys.stderr)
        return 1
    configure_logging(config.log_level)
    for url in config.upstream_urls:
        warn_if_upstream_in_clear(url)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    fix_mmap_threshold()  # large bodies' buffers go back to the system once freed
    daemon.run(
        create_app(config, upstream_ssl=upstream),
        host=config.host,
        port=config.port,
        shutdown_timeout_s=config.shutdown_deadline_s,
        name="spoold",
        ssl_context=listener,
        exposure=Exposure(
            tls=listener is not None,
            tls_hint="keep SPOOLD_HOST on loopback, or set SPOOLD_TLS_CERT_FILE and SPOOLD_TLS_KEY_FILE",
            auth_missing="spoold has no authentication of its own: anyone who can reach this "
            "port can write runs, which it delivers with the fleet's SPOOLD_UPSTREAM_TOKEN; "
            "keep SPOOLD_HOST on loopback",
        ),
        event_loop=config.event_loop,
    )
    return 0

"""spoold, killed with SIGKILL by itself at one boundary of the drain's record stage.

Run as ``python -m spoold_killed_at serve ...`` (``tests/faults`` on PYTHONPATH) with
``SPOOLD_TEST_KILL_AT``:

- ``settle``: the server has answered a round, nothing of it is recorded yet (the
  first settle slice never starts);
- ``ack``: the round's settle is committed (fsync'd), the spool ack never starts.

A kill -9 at a chosen instant, which a signal from outside cannot aim at: the test
then restarts a plain spoold on the same files and checks what reached the server.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from spoold.__main__ import main
from spoold.spool import Spool
from spoold.state.runs_index import RunsIndex


def _die(*_args: Any, **_kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    where = os.environ["SPOOLD_TEST_KILL_AT"]
    if where == "settle":
        RunsIndex.settle_slice = _die  # type: ignore[method-assign]
    elif where == "ack":
        Spool.ack = _die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"SPOOLD_TEST_KILL_AT: unknown boundary {where!r}")
    sys.exit(main())

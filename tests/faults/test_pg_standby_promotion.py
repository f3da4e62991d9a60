"""A synchronous standby promoted after the primary is killed mid-ingest loses no
acknowledged operation, and ingest resumes within 10 s of the promotion; the same check
reports the loss when replication is asynchronous (so it can fail).

Real processes throughout (``standby_failover``): two PostgreSQL postmasters (primary,
standby from ``pg_basebackup -R``), ``telemetry-server`` on the multi-host URL
``postgresql://...@127.0.0.1:P1,127.0.0.1:P2/db?target_session_attrs=read-write``
(nothing is reconfigured at failover), spoold in front of it, ``kill -9`` of the
primary's postmaster, ``pg_promote()`` on the standby.
"""

from __future__ import annotations

from pathlib import Path

import pg_cluster
import pytest
from procs import Reaper
from standby_failover import Outcome, failover_round

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.integration,
    pytest.mark.timeout(300),
]

RESUME_BOUND_S = 10.0


def _report(name: str, outcome: Outcome) -> None:
    print(f"\n[{name}] {outcome.summary()}")


def _assert_nothing_lost(outcome: Outcome) -> None:
    assert outcome.direct.problems == []
    assert outcome.spooled.problems == []
    assert outcome.lost == 0
    assert outcome.duplicate_rows == 0
    # between the kill and the promotion the server said 503 (or the connection broke
    # under a request): never a 500, never a 4xx that would make a client drop the run
    assert set(outcome.refusals) <= {503, None}, outcome.refusals
    assert outcome.refusals.get(503, 0) > 0
    # the agents behind spoold never noticed: every lifecycle acknowledged in full
    assert outcome.spooled_incomplete == 0
    assert outcome.resume_s < RESUME_BOUND_S
    assert outcome.spoold_resume_s < RESUME_BOUND_S
    assert outcome.direct.acked > 0
    assert outcome.spooled.acked > 0


async def test_synchronous_standby_promoted_after_kill9_loses_nothing_acknowledged(
    tmp_path: Path, reaper: Reaper
) -> None:
    outcome = await failover_round(
        pg_cluster.require_postgres(), tmp_path, reaper, synchronous=True, lagging=False, seed=1
    )
    _report("sync", outcome)
    _assert_nothing_lost(outcome)


async def test_synchronous_standby_that_stopped_receiving_still_loses_nothing(
    tmp_path: Path, reaper: Reaper
) -> None:
    """The fault that makes asynchronous replication lose writes (below): with a
    synchronous standby the primary waits for it instead of acknowledging."""
    outcome = await failover_round(
        pg_cluster.require_postgres(), tmp_path, reaper, synchronous=True, lagging=True, seed=2
    )
    _report("sync, standby frozen", outcome)
    _assert_nothing_lost(outcome)


async def test_the_check_reports_acknowledged_writes_lost_with_asynchronous_replication(
    tmp_path: Path, reaper: Reaper
) -> None:
    """The same round, asynchronous: the primary acknowledges commits the frozen standby
    never received; promoted, the standby does not have them, and the check says so."""
    outcome = await failover_round(
        pg_cluster.require_postgres(), tmp_path, reaper, synchronous=False, lagging=True, seed=3
    )
    _report("async, standby frozen", outcome)
    assert outcome.acked_while_lagging > 0, "nothing acknowledged while the standby lagged"
    assert outcome.direct.lost > 0, "the check missed writes the standby never received"
    assert outcome.direct.problems, "loss counted but no operation named"
    # what is reported is loss (missing runs, steps rolled back), never a write made up
    assert not [p for p in outcome.direct.problems if "never sent" in p]
    assert outcome.duplicate_rows == 0
    # ingest still resumed on the promoted standby
    assert outcome.resume_s < RESUME_BOUND_S

from test_stale_runs import *  # noqa: F403

from test_runs_create import *  # noqa: F403

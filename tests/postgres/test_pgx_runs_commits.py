from test_runs_commits import *  # noqa: F403

from test_metrics_counters import *  # noqa: F403

from test_metric_labels import *  # noqa: F403

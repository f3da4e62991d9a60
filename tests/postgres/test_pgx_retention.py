from test_retention import *  # noqa: F403

from test_contention import *  # noqa: F403

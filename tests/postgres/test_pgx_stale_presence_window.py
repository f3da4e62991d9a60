from test_stale_presence_window import *  # noqa: F403

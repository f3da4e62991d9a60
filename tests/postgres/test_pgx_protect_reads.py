from test_protect_reads import *  # noqa: F403

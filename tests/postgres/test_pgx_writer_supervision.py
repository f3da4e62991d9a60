from test_writer_supervision import *  # noqa: F403

from test_metadata_kept import *  # noqa: F403

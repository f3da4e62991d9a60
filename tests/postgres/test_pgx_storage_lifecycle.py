from test_storage_lifecycle import *  # noqa: F403

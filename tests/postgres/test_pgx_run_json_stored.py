from test_run_json_stored import *  # noqa: F403

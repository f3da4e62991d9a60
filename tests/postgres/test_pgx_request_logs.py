from test_request_logs import *  # noqa: F403

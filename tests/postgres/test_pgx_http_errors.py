from test_http_errors import *  # noqa: F403

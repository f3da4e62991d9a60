from test_ops_endpoints import *  # noqa: F403

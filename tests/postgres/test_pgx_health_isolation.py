from test_health_isolation import *  # noqa: F403

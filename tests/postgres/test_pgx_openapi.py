from test_openapi import *  # noqa: F403

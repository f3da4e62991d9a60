from test_reference_client_compat import *  # noqa: F403

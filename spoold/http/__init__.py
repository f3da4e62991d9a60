"""spoold's HTTP face: the guide's API on localhost, answered from local disk or proxied."""

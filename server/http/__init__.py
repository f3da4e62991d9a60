"""HTTP layer of the telemetry server: routes, middlewares and the API documentation."""

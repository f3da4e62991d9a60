"""spoold: the localhost sidecar that makes every telemetry write durable before forwarding it."""

__version__ = "3.0.0"

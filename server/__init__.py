"""Local Telemetry central server: the system of record behind every sidecar."""

__version__ = "3.0.0"

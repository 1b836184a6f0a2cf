"""The drivebay daemon: registry, lifecycle, supervision, actors, control."""

__version__ = "0.1.0"

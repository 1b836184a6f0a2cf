"""The drivebay daemon: registry, lifecycle, supervision, actors, control."""

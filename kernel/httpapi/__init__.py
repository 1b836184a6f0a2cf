"""The HTTP API: the control commands as ``/v1`` routes (docs/api.md)."""

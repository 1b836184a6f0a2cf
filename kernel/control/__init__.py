"""The control channel: the typed command schema, the socket server and its
limits, the handlers, and drivebayctl's command table and rendering."""

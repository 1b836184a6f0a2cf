"""``drivebay``, the author's and publisher's tool: create, check, build and
sign a driver bundle, and keep a TUF repository of bundles.

``drivebayd`` and ``drivebayctl`` are the operator's; this package never talks
to a daemon. ``cli`` holds the command table; each command is one module of
this package with ``add_arguments(parser)`` and ``run(args) -> int``.
"""

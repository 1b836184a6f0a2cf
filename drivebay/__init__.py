"""drivebay: a daemon that hosts plug-in drivers, each in its own process and virtualenv.

The import name of everything the distribution installs. ``drivebay.kernel``
is the daemon, ``drivebay.sandbox`` gives each driver its home,
``drivebay.protocol`` is what crosses a process boundary, and
``drivebay.client`` is the one public API for programs (see docs/client.md).
In the repository the three packages are top-level folders; ``drivebay/``
links to them, and the wheel maps them under this name.
"""

__version__ = "0.1.0"

"""What crosses a process boundary between the kernel and a driver child.

This package is imported by the kernel *and* copied into each driver child, so
the modules the child loads (``versions``, ``frames``, ``msgpack_lite``,
``child_codec``, ``runtime``) use only the standard library; msgspec is used
there when the driver's environment happens to have it. ``messages`` and
``codec`` are the kernel's typed side and need msgspec.
"""

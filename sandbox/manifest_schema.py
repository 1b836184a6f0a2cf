"""The manifest's schema: the Structs ``driver.yaml`` converts into.

Types only; ``sandbox.manifest.parse_manifest`` reads the bytes into them and
``sandbox.manifest_rules`` checks what the types cannot say. Both import this
module, so neither imports the other.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

MANIFEST_FILE: Final = "driver.yaml"
MAX_MANIFEST_BYTES: Final = 1 << 20

PropertyType = Literal["string", "number", "boolean", "date"]
_Count = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
_Seconds = Annotated[float, msgspec.Meta(gt=0, le=10**9)]


class PropertySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One property of the resources a driver serves (its extension data model).

    ``label`` and ``description`` are message keys looked up in
    ``resources/messages*.yaml``; ``max_length`` applies to strings only.
    """

    key: str
    type: PropertyType
    required: bool = False
    max_length: _Count | None = None
    label: str | None = None
    description: str | None = None


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Resource limits for the driver's process; None means the daemon's default."""

    memory_mb: _Count | None = None
    open_files: _Count | None = None
    cpu_s: _Count | None = None
    processes: _Count | None = None
    call_timeout_s: _Seconds | None = None


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The validated contents of ``driver.yaml`` (see docs/drivers.md, "The bundle").

    ``version`` is in PEP 440 normal form; order versions with
    ``sandbox.pep440.version_key``. ``python`` is a specifier such as
    ``">=3.11"``, or None for the daemon's own interpreter.
    """

    name: str
    version: str
    category: str
    entrypoint: str
    description: str = ""
    requires: tuple[str, ...] = ()
    python: str | None = None
    dependencies: tuple[str, ...] = ()
    properties: tuple[PropertySpec, ...] = ()
    limits: Limits = Limits()
    # Operations whose second run has the effect of one (the same op_id): a node
    # taking over a resource runs such an operation again when its first run's
    # end was not recorded (docs/cluster.md), instead of failing it unknown.
    idempotent: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """The entrypoint's module, e.g. ``nfs_driver`` for ``nfs_driver:NfsDriver``."""
        return self.entrypoint.partition(":")[0]

    @property
    def class_name(self) -> str:
        """The entrypoint's class, e.g. ``NfsDriver`` for ``nfs_driver:NfsDriver``."""
        return self.entrypoint.partition(":")[2]

"""The snapshot-volumes bundle, next to the dir-volumes driver it requires.

Both run in real driver children on one directory, as the kernel would run
them: volumes are written through dir-volumes and snapshotted, pruned and
restored through snapshot-volumes.
"""

from __future__ import annotations

import os
import re

import pytest

from drivebay.protocol.errors import OperationFailed
from tests.drivers.bundles import bundle_spec, manifest
from tests.helpers import run, started


def test_requires_dir_volumes_of_its_own_category():
    snapshots, volumes = manifest("snapshot-volumes"), manifest("dir-volumes")
    assert snapshots.requires == ("dir-volumes",)
    assert snapshots.category == volumes.category == "storage"


def test_snapshot_prune_and_restore(tmp_path):
    root = tmp_path / "volumes"

    async def main():
        async with (
            started(bundle_spec(tmp_path, "dir-volumes")) as volumes,
            started(bundle_spec(tmp_path, "snapshot-volumes")) as snapshots,
        ):
            await volumes.attach("vol", {"root": str(root), "quota_mb": 1})
            snapshot_root = str(root / ".snapshots")
            props = {"volumes_root": str(root), "snapshot_root": snapshot_root, "keep": 2}
            await snapshots.attach("snaps", props)

            async def write(path, content):
                args = {"volume": "web", "path": path, "content": content}
                await volumes.call("vol", "write_file", args)

            async def read(path):
                return await volumes.call("vol", "read_file", {"volume": "web", "path": path})

            async def snap():
                return await snapshots.call("snaps", "snapshot", {"volume": "web"})

            await volumes.call("vol", "create_volume", {"name": "web"})
            await write("index.html", "v1")
            first = await snap()
            assert first["snapshot"] == "snap-0001" and first["pruned"] == []
            assert (first["bytes"], first["files"]) == (2, 1)
            await write("index.html", "v2")
            await write("img/logo.svg", "<svg/>")
            assert (await snap())["snapshot"] == "snap-0002"
            third = await snap()
            assert third["snapshot"] == "snap-0003" and third["pruned"] == ["snap-0001"]
            listed = await snapshots.call("snaps", "list_snapshots", {})
            assert [(s["volume"], s["snapshot"], s["files"]) for s in listed] == [
                ("web", "snap-0002", 2),
                ("web", "snap-0003", 2),
            ]
            # Snapshots inside the root are no volume and use none of the quota.
            assert (await volumes.call("vol", "usage", {}))["used_bytes"] == 8

            await write("index.html", "broken")
            await volumes.call("vol", "delete_file", {"volume": "web", "path": "img/logo.svg"})
            restore = {"volume": "web", "snapshot": "snap-0002"}
            restored = await snapshots.call("snaps", "restore", restore)
            assert restored == {**restore, "bytes": 8, "files": 2}
            assert await read("index.html") == "v2"
            assert await read("img/logo.svg") == "<svg/>"

            # A deleted volume comes back from its snapshot.
            await volumes.call("vol", "delete_volume", {"name": "web"})
            await snapshots.call("snaps", "restore", restore)
            assert [v["name"] for v in await volumes.call("vol", "list_volumes", {})] == ["web"]
            assert await read("index.html") == "v2"
            assert sorted(os.listdir(root)) == [".snapshots", "web"]  # no leftovers

            freed = await snapshots.call("snaps", "delete_snapshot", restore)
            assert freed == {**restore, "freed_bytes": 8}
            remaining = await snapshots.call("snaps", "list_snapshots", {"volume": "web"})
            assert [s["snapshot"] for s in remaining] == ["snap-0003"]

    run(main())


def test_links_are_copied_as_links_and_fifos_skipped(tmp_path):
    root, outside = tmp_path / "volumes", tmp_path / "outside"
    (root / "v").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("not in any snapshot")
    (root / "v" / "data").write_text("data")
    (root / "v" / "link").symlink_to(outside)
    os.mkfifo(root / "v" / "pipe")  # reading it would block the copy forever

    async def main():
        async with started(bundle_spec(tmp_path, "snapshot-volumes")) as proc:
            props = {"volumes_root": str(root), "snapshot_root": str(tmp_path / "snaps")}
            await proc.attach("snaps", props)
            taken = await proc.call("snaps", "snapshot", {"volume": "v"})
            copy = tmp_path / "snaps" / "v" / taken["snapshot"]
            assert sorted(os.listdir(copy)) == ["data", "link"]
            assert os.readlink(copy / "link") == str(outside)

    run(main())


def test_refusals_say_what_to_do(tmp_path):
    root = tmp_path / "volumes"

    async def main():
        async with started(bundle_spec(tmp_path, "snapshot-volumes")) as proc:
            props = {"volumes_root": str(root), "snapshot_root": str(tmp_path / "snaps")}
            with pytest.raises(OperationFailed, match="attach a dir-volumes resource with that"):
                await proc.attach("snaps", props)
            root.mkdir()
            inside = {"volumes_root": str(root), "snapshot_root": str(root / "web" / "s")}
            with pytest.raises(OperationFailed, match="would be a volume or inside one"):
                await proc.attach("bad", inside)
            with pytest.raises(OperationFailed, match="keep must be a whole number"):
                await proc.attach("bad", {**props, "keep": 0})
            await proc.attach("snaps", props)
            for op, args, message in (
                ("snapshot", {"volume": "web"}, "no volume 'web' in"),
                ("snapshot", {"volume": "../etc"}, "'../etc' is not a volume name"),
                ("restore", {"volume": "web", "snapshot": "snap-0001"}, "no snapshot 'snap-0001'"),
                ("restore", {"volume": "web", "snapshot": "../../x"}, "is not a snapshot name"),
            ):
                with pytest.raises(OperationFailed, match=re.escape(message)):
                    await proc.call("snaps", op, args)

    run(main())

"""The dir-volumes bundle, run in a real driver child on a temporary directory."""

from __future__ import annotations

import dataclasses
import itertools
import os

import pytest

from drivebay.kernel.drivers.state_move import move_state
from drivebay.protocol.errors import OperationFailed
from tests.drivers.bundles import bundle_copy, bundle_spec
from tests.helpers import run, started

KiB = 1024


def test_volume_and_file_lifecycle(tmp_path):
    root = tmp_path / "volumes"

    async def main():
        async with started(bundle_spec(tmp_path, "dir-volumes")) as proc:
            await proc.attach("vol", {"root": str(root), "quota_mb": 1})
            assert root.is_dir()
            call = proc.call
            assert await call("vol", "create_volume", {"name": "web"}) == {
                "name": "web",
                "path": str(root / "web"),
            }
            args = {"volume": "web", "path": "html/index.html", "content": "<h1>héllo</h1>"}
            written = await call("vol", "write_file", args)
            assert written == {
                "volume": "web",
                "path": "html/index.html",
                "bytes": 15,
                "used_bytes": 15,
            }
            assert (root / "web" / "html" / "index.html").read_text() == "<h1>héllo</h1>"
            blob = {"volume": "web", "path": "blob", "content": b"\x00\xff" * 10}
            await call("vol", "write_file", blob)
            read = {"volume": "web", "path": "blob", "binary": True}
            assert await call("vol", "read_file", read) == b"\x00\xff" * 10
            text = {"volume": "web", "path": "./html//index.html"}
            assert await call("vol", "read_file", text) == "<h1>héllo</h1>"
            (root / "lost+found").mkdir()  # not a volume name: ignored
            assert await call("vol", "list_volumes", {}) == [
                {"name": "web", "bytes": 35, "files": 2}
            ]
            usage = await call("vol", "usage", {})
            assert usage == {
                "used_bytes": 35,
                "quota_bytes": 1 << 20,
                "free_bytes": (1 << 20) - 35,
                "volumes": 1,
            }
            freed = await call("vol", "delete_file", {"volume": "web", "path": "blob"})
            assert freed["freed_bytes"] == 20
            assert await call("vol", "delete_volume", {"name": "web"}) == {
                "name": "web",
                "freed_bytes": 15,
                "files": 1,
            }
            assert await call("vol", "list_volumes", {}) == []
            assert not (root / "web").exists()

    run(main())


def test_quota_refuses_writes_that_would_exceed_it(tmp_path):
    root = tmp_path / "volumes"

    async def main():
        async with started(bundle_spec(tmp_path, "dir-volumes")) as proc:
            await proc.attach("vol", {"root": str(root), "quota_mb": 1})
            for name in ("a", "b"):
                await proc.call("vol", "create_volume", {"name": name})

            def write(volume, path, size):
                args = {"volume": volume, "path": path, "content": b"x" * size}
                return proc.call("vol", "write_file", args)

            await write("a", "one", 600 * KiB)
            # The quota is shared by all volumes of the resource.
            with pytest.raises(OperationFailed) as refused:
                await write("b", "deep/two", 600 * KiB)
            assert refused.value.type_name == "dir_volumes.QuotaExceeded"
            assert str(refused.value).endswith(
                "writing 600.0 KiB to b/deep/two would use 1.2 MiB of the 1.0 MiB quota; "
                "delete files or volumes, or raise quota_mb"
            )
            assert not (root / "b" / "deep").exists()  # nothing written, no directory made
            # Replacing a file counts its new size only; exactly the quota is allowed.
            await write("a", "one", 1024 * KiB)
            assert (await proc.call("vol", "usage", {}))["free_bytes"] == 0
            with pytest.raises(OperationFailed, match="QuotaExceeded"):
                await write("b", "tiny", 1)
            await proc.call("vol", "delete_volume", {"name": "a"})
            await write("b", "tiny", 1)

    run(main())


LEAVING = ["../escape", "/etc/passwd", "a/../../escape", "", ".", "a/..", "nul\0byte"]


def test_paths_that_leave_the_volume_are_refused(tmp_path):
    root = tmp_path / "volumes"

    async def main():
        async with started(bundle_spec(tmp_path, "dir-volumes")) as proc:
            await proc.attach("vol", {"root": str(root), "quota_mb": 1})
            await proc.call("vol", "create_volume", {"name": "v"})
            for op, path in itertools.product(("write_file", "read_file", "delete_file"), LEAVING):
                args = {"volume": "v", "path": path}
                if op == "write_file":
                    args["content"] = "x"
                with pytest.raises(OperationFailed) as refused:
                    await proc.call("vol", op, args)
                assert refused.value.type_name == "volume_fs.PathRefused"
                assert "is not inside the volume" in str(refused.value)
            assert sorted(os.listdir(tmp_path)) == ["state", "volumes"]

    run(main())


def test_symbolic_links_do_not_lead_outside(tmp_path):
    root, outside = tmp_path / "volumes", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep me")

    async def main():
        async with started(bundle_spec(tmp_path, "dir-volumes")) as proc:
            await proc.attach("vol", {"root": str(root), "quota_mb": 1})
            await proc.call("vol", "create_volume", {"name": "v"})
            (root / "v" / "dir-link").symlink_to(outside)
            (root / "v" / "file-link").symlink_to(outside / "secret")
            through = {"volume": "v", "path": "dir-link/secret", "content": "owned"}
            with pytest.raises(OperationFailed, match="'dir-link' is a symbolic link"):
                await proc.call("vol", "write_file", through)
            with pytest.raises(OperationFailed, match="'file-link' is a symbolic link"):
                await proc.call("vol", "read_file", {"volume": "v", "path": "file-link"})
            # Writing over a link replaces the link; its target is untouched.
            over = {"volume": "v", "path": "file-link", "content": "mine"}
            await proc.call("vol", "write_file", over)
            assert (outside / "secret").read_text() == "keep me"
            assert not (root / "v" / "file-link").is_symlink()
            # A volume that is a link is no volume.
            (root / "linked").symlink_to(outside)
            with pytest.raises(OperationFailed, match="FileNotFoundError: no volume 'linked'"):
                await proc.call("vol", "read_file", {"volume": "linked", "path": "secret"})
            assert [v["name"] for v in await proc.call("vol", "list_volumes", {})] == ["v"]

    run(main())


def test_names_and_properties_are_checked(tmp_path):
    root = tmp_path / "volumes"

    async def main():
        async with started(bundle_spec(tmp_path, "dir-volumes")) as proc:
            with pytest.raises(OperationFailed, match="root must be an absolute directory path"):
                await proc.attach("bad", {"root": "relative/dir", "quota_mb": 1})
            with pytest.raises(OperationFailed, match="quota_mb must be a number of MiB above 0"):
                await proc.attach("bad", {"root": str(root), "quota_mb": 0})
            await proc.attach("vol", {"root": str(root), "quota_mb": 1})
            for name in ("..", ".hidden", "a/b", "x" * 65, ""):
                with pytest.raises(OperationFailed, match="is not a volume name"):
                    await proc.call("vol", "create_volume", {"name": name})
            await proc.call("vol", "create_volume", {"name": "v"})
            with pytest.raises(OperationFailed, match="FileExistsError: volume 'v' already"):
                await proc.call("vol", "create_volume", {"name": "v"})
            with pytest.raises(OperationFailed, match="no volume 'w'; create_volume first"):
                await proc.call("vol", "write_file", {"volume": "w", "path": "f", "content": ""})
            await proc.call("vol", "write_file", {"volume": "v", "path": "d/f", "content": ""})
            with pytest.raises(OperationFailed, match="IsADirectoryError: 'd' is a directory"):
                await proc.call("vol", "write_file", {"volume": "v", "path": "d", "content": ""})
            with pytest.raises(OperationFailed, match="NotADirectoryError: 'd/f' is a file"):
                await proc.call(
                    "vol", "write_file", {"volume": "v", "path": "d/f/g", "content": ""}
                )

    run(main())


def test_history_survives_an_upgrade_and_a_property_change(tmp_path):
    """The in-memory history moves with the resource (handoff, takeover): to a
    newer version of the bundle, and to the instance of new properties."""
    root, moved = tmp_path / "volumes", tmp_path / "moved"
    newer = bundle_copy(tmp_path, "dir-volumes", "1.2.0")
    newer_spec = dataclasses.replace(
        bundle_spec(tmp_path, "dir-volumes"), version="1.2.0", src=newer / "src"
    )
    props = {"root": str(root), "quota_mb": 1}

    async def main():
        async with started(bundle_spec(tmp_path, "dir-volumes")) as old, started(newer_spec) as new:
            assert {"handoff", "takeover"} <= old.hooks
            await old.attach("vol", props)
            await old.call("vol", "create_volume", {"name": "web"})
            with pytest.raises(OperationFailed, match="FileExistsError"):
                await old.call("vol", "create_volume", {"name": "web"})
            await old.call("vol", "usage", {})
            await move_state(old, new, "vol", props, old.spec.version)
            history = await new.call("vol", "history", {"limit": 2})
            assert history["counts"] == {"create_volume": 2, "usage": 1}
            assert [(r["operation"], r["outcome"]) for r in history["recent"]] == [
                ("create_volume", "FileExistsError"),
                ("usage", "ok"),
            ]
            assert history["versions"] == ["1.1.0", "1.2.0"]
            changed = {"root": str(moved), "quota_mb": 2}
            await move_state(new, new, "vol", changed, "1.2.0")
            assert moved.is_dir()  # the new instance checked its new root
            assert (await new.call("vol", "usage", {}))["quota_bytes"] == 2 << 20
            history = await new.call("vol", "history", {})
            assert history["counts"] == {"create_volume": 2, "usage": 2}
            assert history["versions"] == ["1.1.0", "1.2.0"]

    run(main())

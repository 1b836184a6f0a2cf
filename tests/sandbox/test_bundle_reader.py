"""Reading dropped bundles: the happy paths, and each hostile case as its exact line."""

from __future__ import annotations

import errno
import os
import socket
import stat
import zipfile
from pathlib import Path

import pytest

from drivebay.protocol.errors import BundleError, KernelError
from drivebay.sandbox.bundle_limits import human_bytes
from drivebay.sandbox.bundle_reader import ReadLimits, read_bundle, read_failure
from drivebay.sandbox.zip_end import declared_entries
from tests.sandbox.bundles import LICENSE_TEXT, make_bundle, zip_bundle


def rejection(path: Path, limits: ReadLimits | None = None) -> str:
    with pytest.raises(BundleError) as caught:
        read_bundle(path, limits)
    return str(caught.value)


def valid_entries(tmp_path: Path) -> list[tuple[str, bytes]]:
    """The entries of a valid bundle, to which a test adds one hostile entry."""
    bundle = make_bundle(tmp_path / "valid")
    return [
        (path.relative_to(bundle).as_posix(), path.read_bytes())
        for path in sorted(bundle.rglob("*"))
        if path.is_file()
    ]


def write_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def patch_central_entry(zipped: Path, name: str, offset: int, value: bytes) -> None:
    """Overwrite bytes at ``offset`` in ``name``'s central directory header."""
    with zipfile.ZipFile(zipped) as archive:
        start = archive.start_dir
    data = bytearray(zipped.read_bytes())
    header = data.index(name.encode(), start) - 46  # the name follows a 46-byte header
    data[header + offset : header + offset + len(value)] = value
    zipped.write_bytes(bytes(data))


def entry(name: str, kind: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | 0o644) << 16
    return info


# -- accepted --------------------------------------------------------------------


def test_directory_bundle(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, src={"demo.py": "class DemoDriver: ...\n", "util/x.py": ""})
    files = read_bundle(bundle)
    assert (files.name, files.source) == ("demo-1.0.0", bundle)
    assert sorted(files.files) == ["LICENSE", "driver.yaml", "src/demo.py", "src/util/x.py"]
    assert files.files["LICENSE"] == LICENSE_TEXT.encode()
    assert files.manifest.entrypoint == "demo:DemoDriver"


def test_zip_bundle_reads_the_same_files(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    from_zip = read_bundle(zip_bundle(bundle))
    assert from_zip.name == "demo-1.0.0.zip"
    assert from_zip.files == read_bundle(bundle).files


def test_package_entrypoint_wheels_resources_and_extra_files(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path,
        manifest_extra={"entrypoint": "pkg.driver:DemoDriver"},
        src={"pkg/__init__.py": "", "pkg/driver/__init__.py": "class DemoDriver: ...\n"},
    )
    (bundle / "lib").mkdir()
    (bundle / "lib" / "tiny-1.0-py3-none-any.whl").write_bytes(b"PK wheel")
    (bundle / "resources").mkdir()
    (bundle / "resources" / "messages.yaml").write_text("host.label: Host\n")
    (bundle / "README.md").write_text("hello\n")
    files = read_bundle(zip_bundle(bundle))
    assert files.wheels == ["lib/tiny-1.0-py3-none-any.whl"]
    assert "resources/messages.yaml" in files.files and "README.md" in files.files


def test_dot_slash_and_directory_entries_are_normalized(tmp_path: Path) -> None:
    entries = [(f"./{name}", data) for name, data in valid_entries(tmp_path)]
    zipped = write_zip(tmp_path / "x.zip", [("./", b""), ("src/", b""), *entries])
    assert sorted(read_bundle(zipped).files) == ["LICENSE", "driver.yaml", "src/demo.py"]


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (200 << 20, 64 << 10, 1000, 3 << 30)] == [
        "200 MiB",
        "64 KiB",
        "1000 bytes",
        "3 GiB",
    ]


# -- paths -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "src/../../x", "C:/x"])
def test_zip_path_escaping_the_root(tmp_path: Path, name: str) -> None:
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), (name, b"x")])
    assert rejection(evil) == (
        f"evil.zip: {name}: path escapes the bundle; bundles must use relative paths inside "
        "their root"
    )


def test_zip_name_too_long_to_store(tmp_path: Path) -> None:
    name = "src/" + "a" * 300 + ".py"
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), (name, b"")])
    assert rejection(evil) == f"evil.zip: {name[:80]}...: a name over 255 bytes; shorten it"


def test_zip_path_too_long_to_store(tmp_path: Path) -> None:
    name = "src/" + "/".join(["d" * 200] * 6) + "/x.py"
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), (name, b"")])
    assert rejection(evil) == f"evil.zip: {name[:80]}...: a path over 1024 bytes; shorten it"


def test_zip_name_with_control_character(tmp_path: Path) -> None:
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), ("src/a\nb.py", b"")])
    assert rejection(evil) == (
        "evil.zip: src/a\\nb.py: name has a backslash, a control character or invalid UTF-8; "
        "rename it"
    )


def test_zip_entry_with_an_empty_name(tmp_path: Path) -> None:
    evil = write_zip(
        tmp_path / "evil.zip", [*valid_entries(tmp_path), (zipfile.ZipInfo("\x00hidden"), b"x")]
    )
    assert rejection(evil) == "evil.zip: an entry has an empty name; rename or remove it"


def test_zip_duplicate_entry(tmp_path: Path) -> None:
    entries = valid_entries(tmp_path)
    with pytest.warns(UserWarning, match="Duplicate name"):
        evil = write_zip(tmp_path / "evil.zip", [*entries, ("LICENSE", b"other")])
    assert rejection(evil) == "evil.zip: LICENSE: appears twice in the zip; keep one entry per path"


def test_zip_file_and_directory_at_one_path(tmp_path: Path) -> None:
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), ("LICENSE/x", b"")])
    assert rejection(evil) == "evil.zip: LICENSE: is both a file and a directory; keep one"


# -- links and special files --------------------------------------------------------


def test_zip_symlink_entry(tmp_path: Path) -> None:
    link = entry("src/passwd", stat.S_IFLNK)
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), (link, b"/etc/passwd")])
    assert rejection(evil) == (
        "evil.zip: src/passwd: is a symlink entry; bundles may not contain links, "
        "store the file itself"
    )


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_zip_special_file_entry(tmp_path: Path, kind: int) -> None:
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), (entry("dev", kind), b"")])
    assert rejection(evil) == (
        "evil.zip: dev: is a device, fifo or socket; bundles hold only regular files and "
        "directories"
    )


def test_dir_symlink(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "src" / "passwd").symlink_to("/etc/passwd")
    assert rejection(bundle) == (
        "demo-1.0.0: src/passwd: is a symbolic link; bundles may not contain links, "
        "put the file itself there"
    )


def test_dir_symlink_to_a_directory(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "resources").symlink_to("/etc", target_is_directory=True)
    assert rejection(bundle) == (
        "demo-1.0.0: resources: is a symbolic link; bundles may not contain links, "
        "put the file itself there"
    )


def test_dir_fifo(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    os.mkfifo(bundle / "src" / "pipe")
    assert rejection(bundle) == (
        "demo-1.0.0: src/pipe: is a device, fifo or socket; bundles hold only regular files "
        "and directories"
    )


def test_dir_socket(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(bundle / "s"))
        assert rejection(bundle) == (
            "demo-1.0.0: s: is a device, fifo or socket; bundles hold only regular files "
            "and directories"
        )


def test_dir_device(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    # A character device 0:0 (an overlayfs "whiteout"): Linux lets any user
    # create that one, so the check runs as root and as an ordinary user alike.
    os.mknod(bundle / "null", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    assert stat.S_ISCHR(os.lstat(bundle / "null").st_mode)
    assert rejection(bundle) == (
        "demo-1.0.0: null: is a device, fifo or socket; bundles hold only regular files "
        "and directories"
    )


# -- sizes -------------------------------------------------------------------------------


def test_too_many_members_in_a_directory(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, src={f"m{i}.py": "" for i in range(10)} | {"demo.py": ""})
    assert rejection(bundle, ReadLimits(max_members=8)) == (
        "demo-1.0.0: more than 8 entries; a bundle may hold at most 8"
    )


def test_too_many_members_in_a_zip(tmp_path: Path) -> None:
    zipped = zip_bundle(make_bundle(tmp_path, src={f"m{i}.py": "" for i in range(10)}))
    assert rejection(zipped, ReadLimits(max_members=8)) == (
        "demo-1.0.0.zip: more than 8 entries; a bundle may hold at most 8"
    )


@pytest.mark.parametrize("zipped", [False, True])
def test_member_too_large(tmp_path: Path, zipped: bool) -> None:
    bundle = make_bundle(tmp_path, src={"demo.py": "", "big.py": "#" * 5000})
    path = zip_bundle(bundle) if zipped else bundle
    assert rejection(path, ReadLimits(max_member_bytes=4096)) == (
        f"{path.name}: src/big.py: larger than 4 KiB, the limit per file; shrink it or leave it out"
    )


@pytest.mark.parametrize("zipped", [False, True])
def test_total_too_large(tmp_path: Path, zipped: bool) -> None:
    bundle = make_bundle(tmp_path, src={f"m{i}.py": "#" * 900 for i in range(5)})
    path = zip_bundle(bundle) if zipped else bundle
    assert rejection(path, ReadLimits(max_total_bytes=4000)) == (
        f"{path.name}: more than 4000 bytes in total; a bundle may hold at most 4000 bytes"
    )


def test_zip_bomb_compression_ratio(tmp_path: Path) -> None:
    bomb = write_zip(tmp_path / "bomb.zip", [*valid_entries(tmp_path), ("zeros", bytes(4 << 20))])
    with zipfile.ZipFile(bomb) as archive:
        info = archive.getinfo("zeros")
    ratio = info.file_size // info.compress_size
    assert rejection(bomb) == (
        f"bomb.zip: zeros: compression ratio {ratio}:1 is over the limit of 100:1 "
        "(a zip bomb?); store it with less compression"
    )


def test_zip_lying_about_its_size_fails_its_crc(tmp_path: Path) -> None:
    zipped = write_zip(tmp_path / "x.zip", valid_entries(tmp_path))
    patch_central_entry(zipped, "LICENSE", 24, (2).to_bytes(4, "little"))  # uncompressed size
    assert rejection(zipped) == (
        "x.zip: incomplete or corrupt zip (Bad CRC-32 for file 'LICENSE'); "
        "copy the whole file again"
    )


# -- corrupt or foreign files -------------------------------------------------------------


def test_half_written_zip(tmp_path: Path) -> None:
    zipped = zip_bundle(make_bundle(tmp_path))
    zipped.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    assert rejection(zipped) == (
        "demo-1.0.0.zip: incomplete or corrupt zip (File is not a zip file); "
        "copy the whole file again"
    )


def test_zip_with_a_flipped_byte_fails_its_crc(tmp_path: Path) -> None:
    zipped = tmp_path / "x.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as archive:
        for name, data in valid_entries(tmp_path):
            archive.writestr(name, data)
    data = zipped.read_bytes()
    at = data.index(LICENSE_TEXT.encode())
    zipped.write_bytes(data[:at] + b"X" + data[at + 1 :])
    assert rejection(zipped) == (
        "x.zip: incomplete or corrupt zip (Bad CRC-32 for file 'LICENSE'); "
        "copy the whole file again"
    )


def test_not_a_zip_at_all(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_text("name: demo\n")
    assert rejection(tmp_path / "x.zip") == (
        "x.zip: incomplete or corrupt zip (File is not a zip file); copy the whole file again"
    )


def test_encrypted_entry(tmp_path: Path) -> None:
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), ("secret", b"x")])
    patch_central_entry(evil, "secret", 8, b"\x01\x00")  # general purpose flags: encrypted
    assert rejection(evil) == "evil.zip: secret: is encrypted; bundles must not be encrypted"


def test_neither_directory_nor_zip(tmp_path: Path) -> None:
    (tmp_path / "demo.tar.gz").write_bytes(b"\x1f\x8b")
    assert rejection(tmp_path / "demo.tar.gz") == (
        "demo.tar.gz: not a bundle; a bundle is a directory or a .zip file"
    )


def test_missing_path(tmp_path: Path) -> None:
    assert rejection(tmp_path / "gone.zip") == (
        "gone.zip: cannot read it (No such file or directory); check it and drop it again"
    )


# -- layout ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "line"),
    [
        (
            "driver.yaml",
            "demo-1.0.0: driver.yaml: missing at the bundle root; add the driver's manifest",
        ),
        (
            "LICENSE",
            "demo-1.0.0: LICENSE: missing at the bundle root; add the driver's license text",
        ),
        ("src", "demo-1.0.0: src/: missing at the bundle root; put the driver's code in src/"),
    ],
)
def test_required_file_missing(tmp_path: Path, missing: str, line: str) -> None:
    bundle = make_bundle(tmp_path)
    target = bundle / missing
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    else:
        target.unlink()
    assert rejection(bundle) == line


def test_zip_of_the_folder_instead_of_its_contents(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    zipped = tmp_path / "x.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(bundle.rglob("*")):
            archive.write(path, path.relative_to(tmp_path).as_posix())
    assert rejection(zipped) == (
        "x.zip: driver.yaml: missing at the bundle root; everything is inside 'demo-1.0.0/', "
        "so zip the folder's contents, not the folder"
    )


def test_entrypoint_module_missing(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, manifest_extra={"entrypoint": "nfs.driver:Nfs"})
    assert rejection(bundle) == (
        "demo-1.0.0: driver.yaml: entrypoint: module 'nfs.driver' not found; "
        "add src/nfs/driver.py or src/nfs/driver/__init__.py"
    )


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (
            "lib/notes.txt",
            "x: lib/notes.txt: lib/ holds only wheel files (*.whl), no folders; remove it",
        ),
        (
            "lib/sub/a-1-py3-none-any.whl",
            "x: lib/sub: lib/ holds only wheel files (*.whl), no folders; remove it",
        ),
        (
            "lib/tiny.whl",
            "x: lib/tiny.whl: not a wheel file name (name-version-python-abi-platform.whl); "
            "keep the name pip or uv gave it",
        ),
    ],
)
def test_lib_holds_only_wheels(tmp_path: Path, path: str, line: str) -> None:
    bundle = make_bundle(tmp_path).rename(tmp_path / "x")
    (bundle / path).parent.mkdir(parents=True, exist_ok=True)
    (bundle / path).write_bytes(b"PK")
    assert rejection(bundle) == line


def test_manifest_errors_name_the_bundle(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path, manifest_extra={"entrypiont": "demo:DemoDriver", "entrypoint": None}
    )
    zipped = zip_bundle(bundle).rename(tmp_path / "x.zip")
    assert (
        rejection(zipped)
        == "x.zip: driver.yaml: unknown field 'entrypiont'; did you mean 'entrypoint'?"
    )
    directory = bundle.rename(tmp_path / "x")
    (directory / "driver.yaml").write_text(
        (directory / "driver.yaml").read_text().replace("entrypiont", "entrypoint")
        + "version: 1.2.x\n"
    )
    assert (
        rejection(directory)
        == "x: driver.yaml: line 6: duplicate key 'version' (first at line 2); keep only one"
    )


# -- depth and races ---------------------------------------------------------------------


def test_directory_nested_too_deep(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, src={"demo.py": "", "a/b/c.py": "", "a/b/c/d.py": ""})
    assert rejection(bundle, ReadLimits(max_depth=3)) == (
        "demo-1.0.0: src/a/b/c/d.py: nested deeper than 3 folders; flatten the bundle"
    )


def test_zip_nested_too_deep(tmp_path: Path) -> None:
    evil = write_zip(tmp_path / "evil.zip", [*valid_entries(tmp_path), ("a/" * 70 + "x", b"")])
    assert rejection(evil) == (
        f"evil.zip: {'a/' * 70}x: nested deeper than 64 folders; flatten the bundle"
    )


def test_many_folders_do_not_exhaust_file_descriptors(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, src={"demo.py": ""} | {f"p{i}/m.py": "" for i in range(1200)})
    assert len(read_bundle(bundle).files) == 1203


def _stat_lying_about(name: str) -> object:
    """An ``os.stat`` that calls ``name`` a regular file, as it was before a swap."""
    real_stat = os.stat

    def lying_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if path == name:
            return real_stat(__file__)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    return lying_stat


def test_file_swapped_for_a_link_after_its_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "src" / "passwd").symlink_to("/etc/passwd")
    monkeypatch.setattr(os, "stat", _stat_lying_about("passwd"))
    assert rejection(bundle) == (
        "demo-1.0.0: src/passwd: is a symbolic link; bundles may not contain links, "
        "put the file itself there (Too many levels of symbolic links)"
    )


def test_file_swapped_for_a_fifo_after_its_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle(tmp_path)
    os.mkfifo(bundle / "src" / "pipe")
    monkeypatch.setattr(os, "stat", _stat_lying_about("pipe"))
    assert rejection(bundle) == (
        "demo-1.0.0: src/pipe: is a device, fifo or socket; bundles hold only regular files "
        "and directories"
    )


def test_folder_swapped_for_a_link_after_its_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "resources").symlink_to(tmp_path, target_is_directory=True)
    real_stat = os.stat

    def lying_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if path == "resources":
            return real_stat(tmp_path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", lying_stat)
    assert rejection(bundle) == (
        "demo-1.0.0: resources: is a symbolic link; bundles may not contain links, "
        "put the file itself there (Not a directory)"
    )


def test_manifest_error_in_a_directory_bundle(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, manifest_extra={"version": "1.2.x"}).rename(tmp_path / "x")
    assert rejection(bundle) == (
        "x: driver.yaml: version: '1.2.x' is not a PEP 440 version (for example 1.2.0)"
    )


@pytest.mark.parametrize("code", [errno.EIO, errno.EBUSY, errno.EAGAIN, errno.ENOMEM, errno.ENOSPC])
def test_a_read_failure_of_the_host_is_retried_not_final(code):
    error = read_failure("b.zip", OSError(code, os.strerror(code)))
    assert type(error) is KernelError
    assert str(error) == f"b.zip: cannot read it now ({os.strerror(code)})"


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOENT, errno.ELOOP])
def test_a_read_failure_of_the_bundle_is_final(code):
    error = read_failure("b.zip", OSError(code, os.strerror(code)))
    assert type(error) is BundleError
    assert str(error) == f"b.zip: cannot read it ({os.strerror(code)}); check it and drop it again"


def test_a_zip_declaring_too_many_entries_is_refused_before_they_are_parsed(tmp_path):
    archive = zip_bundle(make_bundle(tmp_path))
    data = bytearray(archive.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 8 : end + 12] = (60_000).to_bytes(2, "little") * 2  # entries declared
    archive.write_bytes(bytes(data))
    assert declared_entries(archive) == 60_000
    assert rejection(archive, ReadLimits(max_members=100)) == (
        "demo-1.0.0.zip: more than 100 entries; a bundle may hold at most 100"
    )


def test_a_zip64_declares_its_entries_in_its_zip64_end_record(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for i in range(70_000):  # over 65,535: only a zip64 end record can say it
            zipped.writestr(f"f{i}", b"")
    assert declared_entries(archive) == 70_000
    assert rejection(archive) == (
        "many.zip: more than 10000 entries; a bundle may hold at most 10000"
    )

"""``drivebay new``, ``drivebay check`` and ``drivebay.testing`` on real bundles,
real envs and real driver processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivebay.author.cli import main
from drivebay.author.new import write_driver
from drivebay.author.running import RunSettings
from drivebay.kernel.resources.properties import PropertyErrors
from drivebay.protocol.errors import BundleError, OperationFailed
from drivebay.testing import DriverHarness
from tests.author.kit import drivebay, kit_environ, local_index
from tests.helpers import FIXTURES
from tests.sandbox.bundles import make_bundle


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A scratch root with a local package index, and the environment using it."""
    root = tmp_path_factory.mktemp("kit")
    _, index_url = local_index(root / "index")
    return root, kit_environ(root, index_url)


def test_new_refuses_bad_names_and_used_dirs(tmp_path, capsys):
    assert main(["new", "Bad_Name", "--category", "storage", "--dir", str(tmp_path / "a")]) == 1
    assert main(["new", "fine", "--category", "Not A Word", "--dir", str(tmp_path / "b")]) == 1
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    assert main(["new", "fine", "--category", "storage", "--dir", str(tmp_path / "used")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("drivebay: ") for line in lines)
    assert "'Bad_Name' is not a driver name" in lines[0]
    assert "'Not A Word' is not a category" in lines[1]
    assert "exists and is not an empty directory" in lines[2]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_new_driver_passes_its_own_test_and_check(tmp_path, kit):
    root, env = kit
    made = drivebay("new", "hello-world", "--category", "storage", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    bundle = tmp_path / "hello-world"
    assert "LICENSE: a placeholder" in made.stdout
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
        "LICENSE",
        "driver.yaml",
        "resources/messages.yaml",
        "src/hello_world.py",
        "tests/test_hello_world.py",
    ]
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/"],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout

    checked = drivebay("check", str(bundle), "--json", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] and [s["step"] for s in report["steps"]] == [
        "bundle",
        "env",
        "start",
        "health",
    ]
    assert str(root / "envs") in report["steps"][1]["detail"]  # the env the harness built
    assert report["operations"] == [
        {
            "name": "greet",
            "signature": "(name: str) -> str",
            "summary": "Greet ``name`` with this resource's greeting.",
            "async": True,
        }
    ]
    assert any("LICENSE is still the placeholder" in w for w in report["warnings"])


@pytest.mark.slow
def test_check_shows_a_load_error_at_once_and_unencodable_returns(tmp_path, kit):
    _, env = kit
    bundle = tmp_path / "broken"
    write_driver("broken", "network", bundle)
    source = bundle / "src" / "broken.py"
    text = source.read_text()
    source.write_text(text + "\nimport not_installed_anywhere\n")
    started = time.monotonic()
    checked = drivebay("check", str(bundle), env=env)
    took = time.monotonic() - started
    assert checked.returncode == 1
    assert took < 10, took
    last = checked.stderr.splitlines()[-1]
    assert last.startswith("drivebay: broken@0.1.0 failed to load broken:Broken: ")
    assert "ModuleNotFoundError: No module named 'not_installed_anywhere'" in last
    assert 'File "src/broken.py", line' in checked.stderr  # the driver's own frame
    assert "_drivebay_runtime" not in checked.stderr

    source.write_text(
        text.replace("from typing import Any", "from pathlib import Path\nfrom typing import Any")
        + "\n    def where(self) -> Path:\n        return Path('/')\n"
    )
    messages = bundle / "resources" / "messages.yaml"
    messages.write_text(messages.read_text().replace("greeting.help:", "greeting.helps:"))
    checked = drivebay("check", str(bundle), env=env)
    assert checked.returncode == 0, checked.stderr
    assert "    where() -> Path" in checked.stdout
    assert "warning: where returns Path: Path cannot be carried" in checked.stderr
    assert "warning: resources/messages.yaml: no text for 'greeting.help'" in checked.stderr

    (bundle / "LICENSE").unlink()
    checked = drivebay("check", str(bundle), "--json", env=env)
    assert checked.returncode == 1
    assert json.loads(checked.stdout)["error"] == (
        "broken: LICENSE: missing at the bundle root; add the driver's license text"
    )


def _version(bundle: Path, version: str, greeting_key: str) -> Path:
    """A copy of ``bundle`` at ``version`` whose property is called ``greeting_key``."""
    copy = bundle.with_name(f"{bundle.name}-{version}")
    shutil.copytree(bundle, copy)
    manifest = copy / "driver.yaml"
    manifest.write_text(
        manifest.read_text()
        .replace("version: 0.1.0", f"version: {version}")
        .replace("key: greeting", f"key: {greeting_key}")
    )
    return copy


@pytest.mark.slow
def test_harness_properties_calls_and_upgrade(tmp_path, kit):
    root, _ = kit
    bundle = tmp_path / "hello"
    write_driver("hello", "storage", bundle)
    newer = _version(bundle, "0.2.0", "greeting")
    renamed = _version(bundle, "0.3.0", "salutation")
    settings = RunSettings(envs_dir=root / "envs")
    with DriverHarness(bundle, settings) as driver:
        assert driver.version == "0.1.0" and list(driver.operations) == ["greet"]
        with pytest.raises(PropertyErrors, match="greeting: expected a string"):
            driver.attach("bad", {"greeting": 5})
        with pytest.raises(PropertyErrors, match="colour"):
            driver.attach("bad", {"colour": "red"})
        driver.attach("r1", {"greeting": "Hi"})
        driver.attach("r2")
        assert driver.call("r1", "greet", name="Ada") == "Hi, Ada!"
        with pytest.raises(OperationFailed, match="TypeError"):
            driver.call("r1", "greet", nom="Ada")

        driver.upgrade(newer)
        assert driver.version == "0.2.0"
        assert driver.call("r1", "greet", name="Ada") == "Hi, Ada!"
        assert driver.call("r2", "greet", name="Bo") == "Hello, Bo!"

        # r1's greeting is no property of 0.3.0: the upgrade is refused, 0.2.0 serves on.
        with pytest.raises(PropertyErrors, match="greeting"):
            driver.upgrade(renamed)
        assert driver.version == "0.2.0"
        assert driver.call("r1", "greet", name="Cy") == "Hi, Cy!"
        (renamed / "LICENSE").unlink()
        with pytest.raises(BundleError, match="LICENSE: missing"):
            driver.upgrade(renamed)
        assert driver.call("r2", "greet", name="Di") == "Hello, Di!"
        assert driver.health()["ok"] is True


@pytest.mark.slow
def test_check_says_what_the_state_hooks_mean(tmp_path, kit):
    _, env = kit
    source = (FIXTURES / "stateful" / "src" / "stateful.py").read_text()
    properties = [{"key": "journal", "type": "string"}]
    expected = {
        "Stateful": ("hands each resource's state to the next version", None),
        "NoTakeover": ("has handoff but no takeover", None),
        "SyncHandoff": (None, "HookMisdefined: SyncHandoff.handoff is not an async def"),
    }
    for entry, (note, error) in expected.items():
        extra = {"entrypoint": f"stateful:{entry}", "properties": properties}
        bundle = make_bundle(tmp_path / entry, "stateful", "1.0.0", extra, {"stateful.py": source})
        checked = drivebay("check", str(bundle), env=env)
        if error is None:
            assert checked.returncode == 0, checked.stderr
            assert f"note: {note}" in checked.stdout
        else:
            assert checked.returncode == 1
            assert error in checked.stderr.splitlines()[-1]
            assert "_drivebay_runtime" not in checked.stderr


def test_check_warns_of_idempotent_names_the_class_lacks():
    from drivebay.author.check import idempotent_warnings

    assert idempotent_warnings(["resize", "status"], ["resize", "status", "grow"]) == []
    (warning,) = idempotent_warnings(["rezise", "status"], ["resize", "status"])
    assert warning.startswith("idempotent lists 'rezise', which is no operation of the class")

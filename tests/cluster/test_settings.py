"""The ``cluster:`` section of the config: one-line errors that say what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivebay.kernel.cluster.settings import ClusterSettings, shown_database
from drivebay.kernel.config import Config, load_config
from drivebay.protocol.errors import ConfigError

URL = "postgresql://drivebay@db.example:5432/drivebay"


def load(tmp_path: Path, section: str) -> Config:
    path = tmp_path / "drivebay.yaml"
    path.write_text(f"cluster:\n{section}")
    return load_config(path)


def test_without_a_cluster_section_a_node_is_alone() -> None:
    assert Config().cluster is None


def test_a_cluster_section_with_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, f"  database: {URL}\n  node_id: n1\n")
    assert config.cluster == ClusterSettings(URL, "n1", 15.0, 5.0, 5.0)
    assert config.cluster.fence_s == 10.0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "  database: mysql://x/y\n  node_id: n1\n",
            "cluster: database: 'mysql://x/y' is not a PostgreSQL URL; write postgresql://",
        ),
        (
            f"  database: {URL}\n  node_id: 'a b'\n",
            "cluster: node_id: 'a b' is not a node id; use 1 to 48 letters",
        ),
        (
            f"  database: {URL}\n  node_id: n1\n  grace_s: 15\n",
            "cluster: grace_s (15) must be less than lease_s (15); lower grace_s or raise lease_s",
        ),
        (
            f"  database: {URL}\n  node_id: n1\n  renew_s: 10\n",
            "cluster: renew_s (10) must be less than lease_s - grace_s (15 - 5), or a node "
            "stops between two renewals; lower renew_s or grace_s, or raise lease_s",
        ),
        (f"  database: {URL}\n  node_id: n1\n  lease_s: 0\n", "cluster.lease_s: Expected"),
        (f"  database: {URL}\n  node_id: n1\n  lease: 3\n", "unknown key 'lease'; did you mean"),
        (f"  database: {URL}\n", "Object missing required field `node_id`"),
    ],
)
def test_a_bad_cluster_section_says_what_to_change(
    tmp_path: Path, section: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, section)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_a_password_is_never_shown() -> None:
    assert shown_database("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert shown_database(URL) == URL
    with pytest.raises(ValueError, match="u:\\*\\*\\*@h") as caught:
        ClusterSettings("mysql://u:secret@h/db", "n1")
    assert "secret" not in str(caught.value)
    # libpq also takes the password as a query parameter of the URL.
    for url, shown in (
        ("postgresql://h/db?password=secret", "postgresql://h/db?password=***"),
        (
            "postgresql://u:a%40b@h/db?sslmode=require&PASSWORD=x&password=sec%26ret",
            "postgresql://u:***@h/db?sslmode=require&PASSWORD=x&password=***",
        ),
        (
            "postgresql:///db?host=/tmp&password=pw&user=u",
            "postgresql:///db?host=/tmp&password=***&user=u",
        ),
    ):
        assert shown_database(url) == shown, url
    with pytest.raises(ValueError) as caught:
        ClusterSettings("mysql://h/db?password=secret", "n1")
    assert "secret" not in str(caught.value)

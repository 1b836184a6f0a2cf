"""The test's TCP proxy in front of the test PostgreSQL: it forwards, a
blackhole holds bytes both ways without closing a connection (and accepts
new ones without forwarding them), ``restore`` delivers what was held, and
``close`` leaves nothing open."""

from __future__ import annotations

import select
import socket
import struct
import time

import psycopg

from tests.cluster.tcp_proxy import TcpProxy
from tests.postgres import SUPERUSER, ThrowawayPostgres

# PostgreSQL answers an SSLRequest with one byte ('N': no SSL here) at once.
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
QUIET_S = 0.3  # how long "nothing arrives" is watched; a slower machine only waits longer


def unix_target(postgres: ThrowawayPostgres) -> str:
    return f"{postgres.socket_dir}/.s.PGSQL.5432"


def answer(sock: socket.socket, timeout: float) -> bytes | None:
    sock.settimeout(timeout)
    try:
        return sock.recv(1)
    except TimeoutError:
        return None


def test_forwards_holds_both_ways_without_closing_and_forwards_again(
    postgres: ThrowawayPostgres, database: str
) -> None:
    dbname = database.split("?")[0].rsplit("/", 1)[1]
    with TcpProxy(unix_target(postgres)) as proxy:
        url = proxy.url(dbname, SUPERUSER)
        with (
            psycopg.connect(url, autocommit=True) as through,
            psycopg.connect(database, autocommit=True) as direct,
            socket.create_connection(("127.0.0.1", proxy.port)) as raw,
        ):
            assert through.execute("SELECT 1").fetchone() == (1,)
            raw.sendall(SSL_REQUEST)
            assert answer(raw, 10) == b"N"
            through.execute("LISTEN proxied")

            proxy.blackhole()
            # Server to client: a notification does not come through.
            direct.execute("NOTIFY proxied, 'held'")
            assert list(through.notifies(timeout=QUIET_S, stop_after=1)) == []
            # Client to server, on a new connection: accepted, nothing answers.
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as late:
                late.sendall(SSL_REQUEST)
                assert answer(late, QUIET_S) is None

                proxy.restore()
                assert answer(late, 10) == b"N"  # what was held goes through
            held = list(through.notifies(timeout=10, stop_after=1))
            assert [n.payload for n in held] == ["held"]
            assert through.execute("SELECT 2").fetchone() == (2,)  # never closed
            assert proxy.accepted == 3
    # Everything closed: the port no longer accepts.
    refused = socket.socket()
    try:
        refused.settimeout(5)
        assert refused.connect_ex(("127.0.0.1", proxy.port)) != 0
    finally:
        refused.close()


def test_a_blackholed_query_gets_no_answer_until_restored(
    postgres: ThrowawayPostgres, database: str
) -> None:
    dbname = database.split("?")[0].rsplit("/", 1)[1]
    with (
        TcpProxy(unix_target(postgres)) as proxy,
        psycopg.connect(proxy.url(dbname, SUPERUSER), autocommit=True) as through,
    ):
        through.execute("SELECT 1")
        proxy.blackhole()
        pgconn = through.pgconn
        pgconn.nonblocking = 1
        pgconn.send_query(b"SELECT 42")
        assert pgconn.flush() == 0
        readable, _, _ = select.select([pgconn.socket], [], [], QUIET_S)
        assert readable == []  # no answer while black-holed
        proxy.restore()
        deadline = time.monotonic() + 10
        pgconn.consume_input()
        while pgconn.is_busy():
            assert time.monotonic() < deadline, "no answer after restore"
            select.select([pgconn.socket], [], [], 1)
            pgconn.consume_input()
        result = pgconn.get_result()
        assert result is not None and result.get_value(0, 0) == b"42"
        while pgconn.get_result() is not None:
            pass
            pgconn.nonblocking = 0

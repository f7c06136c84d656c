"""The pool's readiness check of a pooled connection and the command packer (regina/redis_conn.py)."""

from __future__ import annotations

import select
import socket

import pytest
import redis
from redis._parsers import hiredis as parser

import regina.redis_conn  # noqa: F401 - installs the check


def _no_patched_poll() -> None:
    raise AssertionError("the zero-timeout check went through the (gevent-patchable) select.poll")


def test_zero_timeout_check_uses_the_os_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    try:
        monkeypatch.setattr(select, "poll", _no_patched_poll)
        assert parser._socket_can_read(a, 0) is False
        b.sendall(b"+OK\r\n")
        assert parser._socket_can_read(a, 0) is True
        b.close()
        a.recv(16)
        assert parser._socket_can_read(a, 0) is True  # EOF reads as ready: the pool reconnects
    finally:
        a.close()


def test_a_waiting_check_keeps_redis_py_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = select.poll

    def counting() -> object:
        calls.append(1)
        return real()

    a, b = socket.socketpair()
    try:
        monkeypatch.setattr(select, "poll", counting)
        assert parser._socket_can_read(a, 0.01) is False
        assert calls
    finally:
        a.close()
        b.close()


def _redis_py_bytes(*args: object) -> bytes:
    """What redis-py's own packer (a connection without ours) sends for `args`."""
    conn = redis.Connection()
    return b"".join(conn.pack_command(*args))


@pytest.mark.parametrize(
    "args",
    [
        (
            "EVALSHA",
            "ab" * 20,
            2,
            "regina:inst:x",
            "regina:run:y",
            "1717.25",
            0.1,
            1e20,
            -3,
            10**30,
            "é ✓",
            b"\x00\xff",
        ),
        ("SET", "k", ""),
        ("SCRIPT LOAD", "return 1"),  # a name in two words: redis-py's packer
        ("SET", "k", memoryview(b"view")),  # not hiredis's: redis-py's packer
        ("XADD", "s", "MAXLEN", 100, "0-1", "e", '{"type":"finish"}' * 500),
    ],
)
def test_the_packer_sends_what_redis_py_sends(args: tuple[object, ...]) -> None:
    assert b"".join(regina.redis_conn.PACKER.pack(*args)) == _redis_py_bytes(*args)


@pytest.mark.parametrize("bad", [None, True, [1], {"a": 1}])
def test_the_packer_refuses_what_redis_py_refuses(bad: object) -> None:
    with pytest.raises(redis.DataError):
        _redis_py_bytes("SET", "k", bad)
    with pytest.raises(redis.DataError):
        regina.redis_conn.PACKER.pack("SET", "k", bad)


def test_a_string_that_is_not_utf8_fails_as_with_redis_py() -> None:
    with pytest.raises(UnicodeEncodeError):
        _redis_py_bytes("SET", "k", "\ud800")
    with pytest.raises(UnicodeEncodeError):
        regina.redis_conn.PACKER.pack("SET", "k", "\ud800")


def test_clients_pack_with_it() -> None:
    client = regina.redis_conn.connect("redis://127.0.0.1:1/0", concurrency=1)
    conn = client.connection_pool.make_connection()
    assert conn._command_packer is regina.redis_conn.PACKER

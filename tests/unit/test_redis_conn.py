"""The pool's readiness check of a pooled connection (regina/redis_conn.py)."""

from __future__ import annotations

import select
import socket

import pytest
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

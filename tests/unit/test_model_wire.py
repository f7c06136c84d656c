"""The direct route's kept-alive HTTP client (regina/runtime/models/wire.py) against a real
local HTTP server: lines, connection reuse, a server-closed idle connection, error bodies,
and the cases it leaves to LiteLLM's httpx client (proxy from the environment, redirect)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from regina.runtime.models import wire


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: list[tuple[str, int]] = []
    user_agents: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).peers.append(self.client_address)
        type(self).user_agents.append(self.headers.get("User-Agent", ""))
        if self.path == "/fail":
            self._reply(500, b'{"error": {"message": "upstream exploded"}}')
        elif self.path == "/moved":
            self.send_response(307)
            self.send_header("Location", "/v1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/chunked":  # a line, and a character, split across chunks
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b'data: {"a": "\xc3', b'\xbc"}\r\n\r\ndata: two\n', b"\ndata: [DONE]\n\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/until-close":  # no length, no chunks: the body ends with the connection
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"data: one\n\ndata: last")
            self.close_connection = True
        elif self.path == "/cut":  # a chunked body that stops short
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"a\r\ndata: one\n\r\n")
            self.close_connection = True
        elif self.path == "/close":
            self._reply(200, b"data: one\n\n", close=True)
        else:
            self._reply(200, b"data: " + body + b"\n\ndata: [DONE]\n\n")

    def _reply(self, status: int, payload: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = close


def _forget_connections() -> None:
    """Close this process's idle connections and forget which endpoints may be served."""
    for conns in wire._idle.values():
        for c in conns:
            c.close()
    wire._idle.clear()
    wire._served.clear()


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.peers, _Handler.user_agents = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    wire._served.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    _forget_connections()


class _Config:
    def get_error_class(self, error_message: str, status_code: int, headers: Any) -> Exception:
        err = RuntimeError(error_message)
        err.status_code = status_code  # type: ignore[attr-defined]
        return err


def _call(url: str, body: bytes = b"{}") -> list[str] | None:
    lines = wire.post_lines(url, body, {"Content-Type": "application/json"}, 5.0, _Config())
    if lines is None:
        return None
    try:
        return list(lines)
    finally:
        lines.close()


def test_lines_come_back_and_the_connection_is_kept_alive(server: str) -> None:
    assert _call(server + "/v1", b'{"a": 1}') == ['data: {"a": 1}', "", "data: [DONE]", ""]
    assert _call(server + "/v1", b'{"a": 2}') == ['data: {"a": 2}', "", "data: [DONE]", ""]
    assert _Handler.peers[0] == _Handler.peers[1]  # one TCP connection for both
    assert _Handler.user_agents[0].startswith("litellm/")  # as LiteLLM's client sends


def test_a_connection_the_server_closed_is_not_reused(server: str) -> None:
    assert _call(server + "/close") == ["data: one", ""]
    assert _call(server + "/v1") is not None
    assert _Handler.peers[0] != _Handler.peers[1]


def test_an_idle_connection_closed_by_the_server_is_replaced(server: str) -> None:
    assert _call(server + "/v1") is not None
    (conn,) = next(iter(wire._idle.values()))
    assert conn.sock is not None
    conn.sock.shutdown(2)  # what the server's idle timeout looks like from here: readable EOF
    assert _call(server + "/v1") is not None
    assert _Handler.peers[0] != _Handler.peers[1]


def test_an_error_status_raises_the_providers_error_with_the_body(server: str) -> None:
    with pytest.raises(RuntimeError, match="upstream exploded") as info:
        _call(server + "/fail")
    assert info.value.status_code == 500  # type: ignore[attr-defined]
    assert not any(wire._idle.values())  # the failed exchange's connection was closed


def test_a_redirect_is_left_to_litellms_client(server: str) -> None:
    assert _call(server + "/moved") is None


def test_a_proxy_in_the_environment_leaves_the_call_to_litellms_client(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert _call(server.replace("127.0.0.1", "localhost.test") + "/v1") is None
    assert _Handler.peers == []


class _CountingSocket:
    """A connection's socket that records each write (and otherwise is the socket)."""

    def __init__(self, sock: Any) -> None:
        self._sock, self.writes = sock, []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_request_goes_out_in_one_write(server: str) -> None:
    assert _call(server + "/v1") is not None
    (conn,) = next(iter(wire._idle.values()))
    counting = _CountingSocket(conn.sock)
    conn.sock = counting  # type: ignore[assignment]
    assert _call(server + "/v1", b'{"one": "write"}') == ['data: {"one": "write"}', "", "data: [DONE]", ""]
    (write,) = counting.writes  # http.client alone writes the headers and the body separately
    assert write.startswith(b"POST /v1 HTTP/1.1\r\n") and write.endswith(b'\r\n\r\n{"one": "write"}')


def test_lines_split_across_chunks_come_back_whole(server: str) -> None:
    assert _call(server + "/chunked") == ['data: {"a": "ü"}', "", "data: two", "", "data: [DONE]", ""]
    assert _call(server + "/chunked") is not None
    assert _Handler.peers[0] == _Handler.peers[1]  # read to its end: the connection was kept


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


def test_https_is_served_verified_and_kept_alive(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    cert_file, key_file = _self_signed(tmp_path)
    _Handler.peers, _Handler.user_agents = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{srv.server_address[1]}"
    wire._served.clear()
    try:
        monkeypatch.setenv("SSL_VERIFY", cert_file)  # LiteLLM's setting: trust this certificate
        assert _call(url + "/v1", b'{"tls": 1}') == ['data: {"tls": 1}', "", "data: [DONE]", ""]
        assert _call(url + "/chunked") == ['data: {"a": "ü"}', "", "data: two", "", "data: [DONE]", ""]
        assert _Handler.peers[0] == _Handler.peers[1]
        _forget_connections()
        monkeypatch.delenv("SSL_VERIFY")  # certifi's roots: the self-signed certificate is refused
        with pytest.raises(ssl.SSLError):
            _call(url + "/v1")
    finally:
        srv.shutdown()
        srv.server_close()
        _forget_connections()


def test_a_body_that_ends_with_the_connection_is_read_to_it(server: str) -> None:
    assert _call(server + "/until-close") == ["data: one", "", "data: last"]
    assert not any(wire._idle.values())  # not reusable: closed


def test_a_chunked_body_cut_short_is_an_error(server: str) -> None:
    import http.client

    with pytest.raises(http.client.IncompleteRead):
        _call(server + "/cut")
    assert not any(wire._idle.values())


def test_a_header_that_would_inject_lines_is_refused_before_sending(server: str) -> None:
    with pytest.raises(ValueError, match="invalid HTTP header"):
        wire.post_lines(server + "/v1", b"{}", {"Authorization": "Bearer x\r\nX-Evil: 1"}, 5.0, _Config())
    with pytest.raises(ValueError, match="invalid HTTP header"):
        wire.post_lines(server + "/v1", b"{}", {"Bad Name": "x"}, 5.0, _Config())
    assert _Handler.peers == []  # nothing reached the server


def test_tool_arguments_past_the_recursion_limit_or_with_lone_surrogates_parse() -> None:
    from regina.runtime.models.parts import parse_args

    deep = "[" * 100_000
    assert parse_args(deep) == {"_raw": deep}
    assert parse_args('{"p": "a\\ud800b", "q": "\\ud83d\\ude00"}') == {"p": "a\ufffdb", "q": "\U0001f600"}
    assert parse_args('{"a": "\\u00e9"}') == {"a": "\u00e9"}

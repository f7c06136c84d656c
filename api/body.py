"""Reading JSON request bodies (and query strings) with errors that say what was wrong."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from flask import request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from regina.errors import BadRequest, RequestTimeout

# A \uD800-\uDFFF escape: only then can the parsed body hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
#: Where the parsed body is kept in the request's environ: a route and `parse_body` parse it once.
_PARSED = "regina.json_body"
#: The deepest nesting of arrays and objects a body may have. Bodies are a few fields deep; every
#: later `json.dumps` of one (an Idempotency-Key's body hash, a log line) recurses per level and
#: fails somewhat below the parser's own limit (~1 000): refused here once, it cannot fail there.
MAX_DEPTH = 100
_TOO_DEEP = f"request body is JSON nested too deeply (more than {MAX_DEPTH} levels of arrays and objects)"


def check_query_string() -> None:
    """400 for a query string that is not UTF-8: Werkzeug decodes `request.args` strictly and
    would raise UnicodeDecodeError (a 500) in whichever route reads it first."""
    try:
        request.query_string.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"query string is not valid UTF-8 (byte {exc.object[exc.start]:#04x} at {exc.start}): "
            "percent-encode its characters' UTF-8 bytes"
        ) from None


def read_body(limit: int, timeout: float) -> None:
    """Read the request's body now (cached for the route): 413 past `limit` (Werkzeug raises it
    for a Content-Length; a chunked body it only cuts at the limit, so look for one byte more);
    408 when it stalls for `timeout` seconds (under gunicorn, whose socket the environ names):
    a body that stops arriving does not hold its connection for good."""
    sock = request.environ.get("gunicorn.socket")
    before = sock.gettimeout() if sock is not None else None
    if sock is not None:
        sock.settimeout(timeout)
    try:
        body = request.get_data(cache=True)
        if request.content_length is None and len(body) >= limit and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    except (TimeoutError, ClientDisconnected):  # Werkzeug reports the socket's timeout as a disconnect
        # The socket keeps the short timeout: gunicorn's drain of the rest fails too and closes it.
        raise RequestTimeout(
            f"the request body stopped before its end (nothing arrived for {timeout:g}s: limits.bodyTimeout)"
        ) from None
    if sock is not None:
        sock.settimeout(before)


class _NotJson(ValueError):
    """A token Python's json module reads but JSON does not have."""


def _not_json(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether arrays and objects in `data` nest more than `limit` levels (walked without
    recursion, containers only)."""
    stack: list[tuple[Any, int]] = [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def json_body(required: bool = True) -> Any:
    """The parsed JSON body; 400 when it is not JSON, nested more than MAX_DEPTH levels or not
    valid Unicode (413 comes from MAX_CONTENT_LENGTH). Parsed once per request."""
    environ = request.environ
    if _PARSED in environ:
        return environ[_PARSED]
    raw = request.get_data(cache=True)
    if not raw:
        if required:
            raise BadRequest('request body must be JSON, e.g. {"message": "hello"}')
        return {}
    try:
        # Strictly: json.loads of bytes lets UTF-8-encoded surrogates through (surrogatepass).
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8 (JSON text must be valid Unicode)") from None
    try:
        data = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except _NotJson as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except ValueError:  # int() refuses numbers of more than sys.get_int_max_str_digits() digits
        raise BadRequest(f"request body holds a number of more than {sys.get_int_max_str_digits()} digits") from None
    # Fewer brackets than the limit cannot nest past it: the walk is only for bodies with many.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(data, MAX_DEPTH):
        raise BadRequest(_TOO_DEEP)
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "request body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape): "
                "strings must be valid Unicode"
            ) from None
    environ[_PARSED] = data
    return data

"""The broker URL kombu is given for Regina's Redis URL.

redis-py and kombu spell a Redis behind a Unix socket differently (`unix:///path?db=N` and
`redis+socket:///path?virtual_host=N`), and kombu picks the transport of a `name+socket://` URL
by its name: `redis+socket://` would be kombu's own Redis transport, not workers/transport.py.
So the socket URL names this project's transport under an alias kombu resolves. This module
imports no transport (celeryconfig uses it, before a worker's pool is set up).
"""

from __future__ import annotations

import urllib.parse

from kombu.transport import TRANSPORT_ALIASES

#: workers/transport.py's name in broker URLs.
ALIAS = "regina"
TRANSPORT_ALIASES.setdefault(ALIAS, "workers.transport:Transport")


def kombu_broker_url(url: str) -> str:
    """`unix:///path?db=N` as `regina+socket:///path?virtual_host=N`; any other URL as it is."""
    if not url.startswith("unix://"):
        return url
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    rest = [(key, value) for key, value in query if key != "db"]
    rest += [("virtual_host", value) for key, value in query if key == "db"]
    tail = f"?{urllib.parse.urlencode(rest)}" if rest else ""
    return f"{ALIAS}+socket://{parts.netloc}{parts.path}{tail}"


def is_socket_url(url: str) -> bool:
    """A broker URL of workers/transport.py over a Unix socket."""
    return url.startswith(f"{ALIAS}+socket://")


def stock_broker_url(url: str) -> str:
    """The URL for kombu's own Redis transport (Flower reads `redis+socket://`, not ours)."""
    return "redis" + url[len(ALIAS) :] if is_socket_url(url) else url

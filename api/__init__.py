"""The Flask app: a thin HTTP adapter over `regina.lifecycle.Coordinator`."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, g, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response as BaseResponse

from api import agents, chat, health, instances, openapi, runs
from api.body import check_query_string, read_body
from api.errors import error_response, register_error_handlers
from api.services import Services, build_services
from regina.config import Settings, process_settings
from regina.metrics import HTTP_REQUESTS, HTTP_SECONDS
from regina.secrets import add_secret, install_log_redaction

#: Methods counted by name in the request metrics (others as "other").
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _JSONProvider(DefaultJSONProvider):
    """Responses dumped by orjson (a tenth of json's time for an answer); what it refuses (a
    type it does not know, an integer past 64 bits) goes the default way."""

    def response(self, *args: Any, **kwargs: Any) -> BaseResponse:
        obj = self._prepare_response_obj(args, kwargs)
        if self._app.debug or self.compact is False or self.sort_keys:
            return super().response(obj)
        try:
            body = orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            return super().response(obj)
        make: Any = self._app.response_class  # a flask Response: takes bytes
        return make(body, mimetype=self.mimetype)  # type: ignore[no-any-return]


class ReginaFlask(Flask):
    """Flask with the async check of each view and hook made once: Flask's `ensure_sync`
    inspects every one of them on every request, and none of ours is a coroutine."""

    json_provider_class = _JSONProvider

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._checked: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._checked[func]
        except KeyError:
            made = self._checked[func] = super().ensure_sync(func)
            return made
        except TypeError:  # not hashable: checked each time
            return super().ensure_sync(func)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the app from settings (default: the process's, from REGINA_CONFIG + environment)."""
    install_log_redaction()
    settings = settings or process_settings()
    add_secret(settings.auth_token)
    app = ReginaFlask("regina", static_folder=None)  # no static files: no /static route
    limit = app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["regina"] = services or build_services(settings)
    register_error_handlers(app)

    for module in (agents, instances, chat, runs, health, openapi):
        app.register_blueprint(module.bp)

    @app.before_request
    def _start() -> None:
        """Start the request's timer; refuse a query string that is not UTF-8 (400) and a body over
        limits.maxBodyBytes (413) on every route, also those that ignore them."""
        g.regina_started = time.perf_counter()
        if request.method != "GET":
            read_body(limit, settings.limits.body_timeout)
        check_query_string()  # after the body: read under its timeout, whatever the answer

    #: (route, method, status) -> the request counter's and the latency histogram's children
    #: (`labels` validates and locks on every call).
    counted: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    @app.after_request
    def _count(response: Response) -> Response:
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "unknown"
        method = request.method if request.method in _METHODS else "other"  # not a series per token
        status = response.status_code
        children = counted.get((endpoint, method, status))
        if children is None:
            children = counted[endpoint, method, status] = (
                HTTP_REQUESTS.labels(endpoint, method, str(status)),
                HTTP_SECONDS.labels(endpoint),
            )
        children[0].inc()
        started = g.get("regina_started")
        if started is not None:
            children[1].observe(time.perf_counter() - started)
        return response

    if settings.auth_token:
        expected = f"Bearer {settings.auth_token}"

        @app.before_request
        def _auth() -> tuple[Response, int] | None:
            if request.path in openapi.PUBLIC_PATHS:
                return None
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response("missing or wrong bearer token (Authorization: Bearer …)", 401)
            return None

    return app

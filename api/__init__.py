"""The Flask app: a thin HTTP adapter over `regina.lifecycle.Coordinator`."""

from __future__ import annotations

import hmac
import time

from flask import Flask, Response, g, request

from api import agents, chat, health, instances, openapi, runs
from api.errors import error_response, register_error_handlers
from api.services import Services, build_services
from regina.config import Settings, process_settings
from regina.metrics import HTTP_REQUESTS, HTTP_SECONDS
from regina.secrets import add_secret, install_log_redaction


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the app from settings (default: the process's, from REGINA_CONFIG + environment)."""
    install_log_redaction()
    settings = settings or process_settings()
    add_secret(settings.auth_token)
    app = Flask("regina")
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["regina"] = services or build_services(settings)
    register_error_handlers(app)

    for module in (agents, instances, chat, runs, health, openapi):
        app.register_blueprint(module.bp)

    @app.before_request
    def _start_timer() -> None:
        g.regina_started = time.perf_counter()

    @app.before_request
    def _body_limit() -> None:
        """Every route refuses a body over limits.maxBodyBytes (413), also those that ignore it."""
        if request.method != "GET":
            request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unknown"
        HTTP_REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        started = g.get("regina_started")
        if started is not None:
            HTTP_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        return response

    if settings.auth_token:
        expected = f"Bearer {settings.auth_token}"

        @app.before_request
        def _auth() -> tuple[Response, int] | None:
            if request.path == "/healthz":
                return None
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response("missing or wrong bearer token (Authorization: Bearer …)", 401)
            return None

    return app

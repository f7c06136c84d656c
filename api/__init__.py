"""The Flask app: a thin HTTP adapter over `regina.lifecycle.Coordinator`."""

from __future__ import annotations

import hmac

from flask import Flask, Response, request

from api.errors import error_response, register_error_handlers
from api.services import Services, build_services
from regina.config import Settings, load_settings


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the app from settings (default: REGINA_CONFIG + environment)."""
    settings = settings or load_settings()
    app = Flask("regina")
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["regina"] = services or build_services(settings)
    register_error_handlers(app)

    from api import agents, chat, health, instances

    for module in (agents, instances, chat, health):
        app.register_blueprint(module.bp)

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

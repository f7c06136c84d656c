"""Agent definition endpoints: list, show, spawn and list instances; registry admin."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from api.body import json_body
from api.idem import HEADER
from api.services import Services
from regina.idempotency import body_hash
from regina.registry_sync import announce_reload

bp = Blueprint("agents", __name__)


def services() -> Services:
    """The app's Services."""
    return current_app.extensions["regina"]  # type: ignore[no-any-return]


@bp.get("/agents")
def list_agents() -> Response:
    return jsonify([d.public_dict() for d in services().registry.list()])


@bp.get("/agents/<def_id>")
def get_agent(def_id: str) -> Response:
    return jsonify(services().registry.get(def_id).public_dict())


@bp.post("/agents/<def_id>/instances")
def spawn(def_id: str) -> tuple[Response, int]:
    coord = services().coordinator
    key = request.headers.get(HEADER)
    if key is not None:
        return jsonify(coord.spawn_once(def_id, key, body_hash(json_body(required=False)))), 201
    return jsonify(coord.spawn(def_id).public()), 201


@bp.get("/agents/<def_id>/instances")
def list_instances(def_id: str) -> Response:
    return jsonify([r.public() for r in services().coordinator.instances(def_id)])


@bp.get("/admin/agents/errors")
def registry_errors() -> Response:
    return jsonify([dict(e) for e in services().registry.errors])


@bp.post("/admin/agents/reload")
def reload_registry() -> Response:
    svc = services()
    reg = svc.registry
    reg.reload()
    announce_reload(svc.client)
    return jsonify({"agents": [d.id for d in reg.list()], "errors": [dict(e) for e in reg.errors]})

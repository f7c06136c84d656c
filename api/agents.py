"""Agent definition endpoints: list, show, spawn and list instances; registry admin."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from api import models as m
from api.body import json_body
from api.idem import idem_key
from api.openapi import documented
from api.services import Services
from regina.definitions import AgentDefinition
from regina.errors import BadRequest
from regina.idempotency import body_hash
from regina.providers import missing_api_key

bp = Blueprint("agents", __name__)


def services() -> Services:
    """The app's Services."""
    return current_app.extensions["regina"]  # type: ignore[no-any-return]


def _shown(definition: AgentDefinition) -> dict[str, Any]:
    """The public fields plus `ready` (and `missingKey`: the variable's name, never its value)."""
    data = definition.public_dict()
    missing = missing_api_key(definition.model, definition.provider)
    data["ready"] = missing is None
    if missing:
        data["missingKey"] = missing
    return data


@bp.get("/agents")
@documented({"HTTP_200": m.Agents}, tag="agents")
def list_agents() -> Response:
    return jsonify([_shown(d) for d in services().registry.list()])


@bp.get("/agents/<def_id>")
@documented({"HTTP_200": m.Agent}, tag="agents")
def get_agent(def_id: str) -> Response:
    return jsonify(_shown(services().registry.get(def_id)))


@bp.post("/agents/<def_id>/instances")
@documented({"HTTP_201": m.Instance}, json=m.SpawnBody, tag="agents", headers=m.IdempotencyHeaders, body_required=False)
def spawn(def_id: str) -> tuple[Response, int]:
    """201 with the new instance. The body is optional: empty or a JSON object, of which spawn
    reads no field (with an Idempotency-Key, its retries are compared by it); anything else is a
    400, with a key or without."""
    coord = services().coordinator
    body = json_body(required=False)
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be empty or a JSON object, got a JSON {_json_type(body)}")
    key = idem_key()
    if key is not None:
        return jsonify(coord.spawn_once(def_id, key, body_hash(body))), 201
    return jsonify(coord.spawn(def_id).public()), 201


def _json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"


@bp.get("/agents/<def_id>/instances")
@documented({"HTTP_200": m.Instances}, tag="agents")
def list_instances(def_id: str) -> Response:
    return jsonify([r.public() for r in services().coordinator.instances(def_id)])


@bp.get("/admin/agents/errors")
@documented({"HTTP_200": m.RegistryErrors}, tag="admin")
def registry_errors() -> Response:
    return jsonify([dict(e) for e in services().registry.errors])


@bp.post("/admin/agents/reload")
@documented({"HTTP_200": m.Reloaded}, tag="admin")
def reload_registry() -> Response:
    svc = services()
    reg = svc.registry
    reg.reload()
    svc.follower.announce()
    return jsonify({"agents": [d.id for d in reg.list()], "errors": [dict(e) for e in reg.errors]})

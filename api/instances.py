"""Instance endpoints: show, heartbeat, suspend, resume, delete, steer, messages, fleet."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.agents import services
from api.body import json_body
from api.idem import idem_request

bp = Blueprint("instances", __name__)


@bp.get("/instances")
def fleet() -> Response:
    """Every instance, suspended ones included, with owner and epoch."""
    return jsonify([r.public(include_member=True) for r in services().coordinator.instances()])


@bp.get("/instances/<iid>")
def show(iid: str) -> Response:
    rec = services().coordinator.get(iid)
    data = rec.public(include_member=True)
    return jsonify(data)


@bp.post("/instances/<iid>/heartbeat")
def heartbeat(iid: str) -> tuple[str, int]:
    services().coordinator.heartbeat(iid)
    return "", 204


@bp.post("/instances/<iid>/suspend")
def suspend(iid: str) -> tuple[str, int]:
    services().coordinator.suspend(iid)
    return "", 204


@bp.post("/instances/<iid>/resume")
def resume(iid: str) -> tuple[str, int]:
    services().coordinator.resume(iid)
    return "", 204


@bp.delete("/instances/<iid>")
def delete(iid: str) -> tuple[str, int]:
    services().coordinator.delete(iid)
    return "", 204


@bp.post("/instances/<iid>/steer")
def steer(iid: str) -> Response:
    coord = services().coordinator
    body = json_body()
    message = coord.validate_message(body)
    steer_id = coord.runs.steer(iid, message, idem_request(body))
    return jsonify({"queued": True, "steerId": steer_id})


@bp.get("/instances/<iid>/messages")
def messages(iid: str) -> Response:
    return jsonify(services().coordinator.messages(iid))

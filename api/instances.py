"""Instance endpoints: show, heartbeat, suspend, resume, delete, steer, messages, fleet."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request

from api import models as m
from api.agents import services
from api.body import json_body
from api.idem import idem_request
from api.openapi import documented
from regina import keys
from regina.errors import BadRequest
from regina.fleet import MAX_LIMIT, Fleet

STATUSES = ("started", "suspending", "suspended")

bp = Blueprint("instances", __name__)


@bp.get("/instances")
@documented({"HTTP_200": m.Fleet}, query=m.FleetQuery, tag="instances", headers_out={200: ["X-Next-Cursor", "Link"]})
def fleet() -> Response:
    """Every instance, suspended ones included: filters `agent`, `status`, `member`; pages of
    `limit` (default 100, at most 1000), the next page's `cursor` in the `X-Next-Cursor` header."""
    args = request.args
    raw_limit = args.get("limit", "100")
    small = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 18  # int() refuses 4 300+ digits
    if not small or not 1 <= int(raw_limit) <= MAX_LIMIT:
        shown = raw_limit if len(raw_limit) <= 40 else raw_limit[:40] + "…"
        raise BadRequest(f"query parameter 'limit' must be an integer from 1 to {MAX_LIMIT}, got {shown!r}")
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"query parameter 'status' must be one of {', '.join(STATUSES)}, got {status!r}")
    agent = args.get("agent")
    svc = services()
    if agent is not None and agent not in svc.registry and not svc.client.exists(keys.definition_instances(agent)):
        # 404 only for an agent with neither a definition nor instances: instances outlive their
        # definition (a file removed or not loadable here) and stay listed by agent.
        svc.registry.get(agent)
    items, next_cursor = Fleet(svc.client).page(
        agent, status, args.get("member"), int(raw_limit), args.get("cursor") or None
    )
    resp = jsonify(items)
    if next_cursor is not None:
        resp.headers["X-Next-Cursor"] = next_cursor
        query = {k: v for k, v in args.items() if k != "cursor"} | {"cursor": next_cursor}
        resp.headers["Link"] = f'<{request.path}?{urlencode(query)}>; rel="next"'
    return resp


@bp.get("/instances/<iid>")
@documented({"HTTP_200": m.InstanceDetail}, tag="instances")
def show(iid: str) -> Response:
    svc = services()
    return jsonify(Fleet(svc.client).detail(svc.coordinator.show(iid)))


@bp.post("/instances/<iid>/heartbeat")
@documented({"HTTP_204": None}, tag="instances")
def heartbeat(iid: str) -> tuple[str, int]:
    services().coordinator.heartbeat(iid)
    return "", 204


@bp.post("/instances/<iid>/suspend")
@documented({"HTTP_204": None, "HTTP_202": m.Suspending}, tag="instances")
def suspend(iid: str) -> tuple[str | Response, int]:
    """204 once suspended; 202 while the owner is still finishing a running step (it will)."""
    if services().coordinator.suspend(iid):
        return "", 204
    return jsonify({"instanceId": iid, "status": "suspending"}), 202


@bp.post("/instances/<iid>/resume")
@documented({"HTTP_204": None}, tag="instances")
def resume(iid: str) -> tuple[str, int]:
    services().coordinator.resume(iid)
    return "", 204


@bp.delete("/instances/<iid>")
@documented({"HTTP_204": None}, tag="instances")
def delete(iid: str) -> tuple[str, int]:
    services().coordinator.delete(iid)
    return "", 204


@bp.post("/instances/<iid>/steer")
@documented({"HTTP_200": m.SteerReceipt}, json=m.MessageBody, tag="chat", headers=m.IdempotencyHeaders)
def steer(iid: str) -> Response:
    coord = services().coordinator
    body = json_body()
    message = coord.validate_message(body)
    steer_id = coord.runs.steer(iid, message, idem_request(body))
    return jsonify({"queued": True, "steerId": steer_id})


@bp.get("/instances/<iid>/messages")
@documented({"HTTP_200": m.Messages}, tag="instances")
def messages(iid: str) -> Response:
    return jsonify(services().coordinator.messages(iid))

"""Liveness/readiness and Prometheus metrics."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from api import models as m
from api.agents import services
from api.openapi import documented
from regina.cluster.membership import live_members
from regina.errors import BadRequest
from regina.metrics import exposition
from regina.redis_conn import PROBE_TIMEOUT

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented({"HTTP_200": m.Health, "HTTP_503": m.Health}, query=m.HealthQuery, tag="operations", errors=(400, 500))
def healthz() -> tuple[Response, int]:
    """200 when Redis answers within PROBE_TIMEOUT s; with ?ready=true also needs a live worker
    (else 503). Bounded so a platform's probe gets an answer while Redis hangs."""
    ready = _query().ready
    svc = services()
    try:
        svc.probe.ping()
        members = live_members(svc.probe)
    except redis.TimeoutError:
        error = f"Redis is unreachable: no answer within {PROBE_TIMEOUT:g} s"
        return jsonify({"status": "unavailable", "error": error}), 503
    except redis.RedisError as exc:
        return jsonify({"status": "unavailable", "error": f"Redis is unreachable: {exc}"}), 503
    body = {"status": "ok", "workers": len(members), "agents": len(svc.registry.list())}
    if ready and not members:
        return jsonify({**body, "status": "not ready", "error": "no live worker"}), 503
    return jsonify(body), 200


def _query() -> m.HealthQuery:
    """The query as a boolean `ready`, or a 400 naming it (`?ready=0` is false, not a value)."""
    try:
        return m.HealthQuery.model_validate(request.args.to_dict())
    except ValidationError:
        raw = request.args.get("ready", "")
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise BadRequest(
            f"query parameter 'ready' must be a boolean (true/false, 1/0, yes/no, on/off), got {shown!r}"
        ) from None


@bp.get("/metrics")
@documented(
    {"HTTP_200": (m.Text, "Prometheus text format")}, tag="operations", errors=(500, 503), media={200: "text/plain"}
)
def metrics() -> Response:
    """Prometheus text: every web (and local worker) process's counts, and the cluster gauges
    (read through the health probe's client: while Redis hangs a scrape answers within
    PROBE_TIMEOUT s, without them)."""
    return Response(exposition(services().probe), mimetype=CONTENT_TYPE_LATEST)

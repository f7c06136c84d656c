"""Liveness/readiness and Prometheus metrics."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from api import models as m
from api.agents import services
from api.openapi import documented
from regina.cluster.membership import live_members
from regina.metrics import exposition

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented({"HTTP_200": m.Health, "HTTP_503": m.Health}, tag="operations")
def healthz() -> tuple[Response, int]:
    """200 when Redis answers; with ?ready=1 also needs a live worker (else 503)."""
    svc = services()
    try:
        svc.client.ping()
        members = live_members(svc.client)
    except redis.RedisError as exc:
        return jsonify({"status": "unavailable", "error": f"redis: {exc}"}), 503
    body = {"status": "ok", "workers": len(members), "agents": len(svc.registry.list())}
    if request.args.get("ready") and not members:
        return jsonify({**body, "status": "not ready", "error": "no live worker"}), 503
    return jsonify(body), 200


@bp.get("/metrics")
@documented({"HTTP_200": (None, "Prometheus text format")}, tag="operations")
def metrics() -> Response:
    """Prometheus text: every web (and local worker) process's counts, and the cluster gauges."""
    return Response(exposition(services().client), mimetype=CONTENT_TYPE_LATEST)

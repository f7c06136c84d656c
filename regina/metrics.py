"""Every Prometheus metric Regina exports, defined once (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "regina_http_requests_total",
    "HTTP requests answered by this web process, by endpoint and status code.",
    ["endpoint", "method", "status"],
)

HTTP_SECONDS = Histogram(
    "regina_http_request_seconds",
    "Time to answer an HTTP request (for streams: until the response started).",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

RUNS_STARTED = Counter("regina_runs_started_total", "Chat runs queued by this web process.", ["mode"])

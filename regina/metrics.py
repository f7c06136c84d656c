"""Every Prometheus metric Regina exports, defined once, and how they are served.

Web processes serve `GET /metrics`; gunicorn runs several of them, so counts live in
prometheus_client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set up by `regina web` and
`regina up`) and every scrape sums all processes' files. Workers started with the same directory
(`regina up`, or one machine with the variable set) are included there too; a worker on another
machine serves its own on `metricsPort`. Gauges describing the cluster (instances by status)
are read from Redis at scrape time by `ClusterCollector`, so they are right whichever process
answers. Hot-path cost: one counter or histogram update is a few microseconds (an mmap write).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from regina import keys
from regina.cluster.membership import live_members
from regina.config import environment
from regina.pids import pid_runs

P = ParamSpec("P")
R = TypeVar("R")
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# -- web --------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "regina_http_requests_total",
    "HTTP requests answered by web processes, by endpoint and status code.",
    ["endpoint", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "regina_http_request_seconds",
    "Time to answer an HTTP request (for streams: until the response started).",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RUNS_STARTED = Counter("regina_runs_started_total", "Chat runs queued by web processes.", ["mode"])
SPAWNS = Counter("regina_spawns_total", "Instances spawned.", ["agent"])
STEERS = Counter("regina_steering_messages_total", "Steering messages accepted.")

# -- worker: instances ------------------------------------------------------------------------

RESUMES = Counter(
    "regina_resumes_total", "Instances activated on a worker (after a spawn, a resume or a move to another worker)."
)
RESUME_SECONDS = Histogram("regina_resume_seconds", "Time to activate an instance on a worker.", buckets=_SECONDS)
SUSPENDS = Counter("regina_suspends_total", "Instances suspended (backed up and released).")
SUSPEND_SECONDS = Histogram(
    "regina_suspend_seconds", "Time to suspend an instance (waiting for its step, backup).", buckets=_SECONDS
)
BACKUP_BYTES = Histogram(
    "regina_backup_bytes",
    "Size of each instance backup written to storage.",
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
)
BACKUPS = Counter("regina_backups_total", "Instance backups written to storage.")
BACKUP_SECONDS = Histogram("regina_backup_seconds", "Time to snapshot and store one backup.", buckets=_SECONDS)
QUEUE_DEPTH = Gauge(
    "regina_worker_queue_depth",
    "Chat steps waiting for a worker (the entries on its ready list).",
    ["member"],
    multiprocess_mode="livemax",
)
WORKER_INSTANCES = Gauge(
    "regina_worker_instances", "Instances attached to a worker.", ["member"], multiprocess_mode="livemax"
)
WORKER_MEMORY = Gauge(
    "regina_worker_memory_bytes",
    "Resident memory of a worker: its own process, and its instances' tool processes (useProcesses).",
    ["member", "part"],
    multiprocess_mode="livemax",
)
WORKER_TOOL_PROCESSES = Gauge(
    "regina_worker_tool_processes",
    "Tool processes alive on a worker (useProcesses).",
    ["member"],
    multiprocess_mode="livemax",
)

# -- worker: runs -----------------------------------------------------------------------------

RUNS = Counter("regina_runs_total", "Runs ended, by mode (stream or sync) and outcome.", ["mode", "outcome"])
RUN_SECONDS = Histogram("regina_run_seconds", "Run duration, start of the step to its last event.", buckets=_SECONDS)
FIRST_TOKEN_SECONDS = Histogram(
    "regina_run_first_token_seconds", "Time from a run's start to its first text.", buckets=_SECONDS
)
RUN_STEPS = Histogram("regina_run_steps", "Model steps per run.", buckets=(1, 2, 3, 5, 8, 13, 21, 50, 100))
MODEL_SECONDS = Histogram(
    "regina_model_call_seconds", "Duration of one model call.", ["provider", "model"], buckets=_SECONDS
)
MODEL_ERRORS = Counter("regina_model_errors_total", "Runs ended by a model error.", ["provider", "model"])
TOKENS = Counter("regina_tokens_total", "Model tokens, by type (prompt or completion).", ["type", "provider", "model"])
TOOL_CALLS = Counter("regina_tool_calls_total", "Tool calls, by tool and outcome (ok or error).", ["tool", "outcome"])


class ClusterCollector(Collector):
    """Instances by status, read from Redis at scrape time (cheap: a ZCARD and the members)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("regina_instances", "Instances in the cluster, by status.", labels=["status"])
        try:
            total = int(self.client.zcard(keys.INSTANCES))
            started = sum(live_members(self.client).values())
        except redis.RedisError:
            return
        family.add_metric(["started"], started)
        family.add_metric(["suspended"], max(total - started, 0))
        yield family


def timed(counter: Counter, histogram: Histogram) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count each call that returns and observe its duration."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.monotonic()
            result = fn(*args, **kwargs)
            counter.inc()
            histogram.observe(time.monotonic() - started)
            return result

        return wrapper

    return decorate


def multiprocess_enabled() -> bool:
    """True when counts go to PROMETHEUS_MULTIPROC_DIR (several processes, one view)."""
    return bool(environment().get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(client: redis.Redis | None = None) -> bytes:
    """The text a scrape returns: every process's counts in multiprocess mode, else this one's,
    plus the cluster gauges read from Redis."""
    path = environment().get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        forget_dead_processes(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if client is not None:
        cluster = CollectorRegistry()
        cluster.register(ClusterCollector(client))
        text += generate_latest(cluster)
    return text


def serve_worker_metrics(port: int, host: str) -> None:
    """This worker's own `/metrics` on `host:port` (for a worker on another machine than the web)."""
    start_http_server(port, addr=host, registry=REGISTRY)


def forget_dead_processes(path: str) -> None:
    """Drop the live gauges of processes in `path` that are gone: one killed (-9, OOM) or
    crashed never calls `process_exited`, and prometheus_client shows a `live*` gauge's file
    until `mark_process_dead` removes it (a dead worker's gauges would stay forever). Counters
    and histograms stay: a dead process's counts still add up. The directory belongs to one host
    (one pid namespace), so a pid that does not run is gone; one reused by another process keeps
    the dead one's gauges until that process ends too."""
    pids: set[int] = set()
    for name in os.listdir(path):
        if name.startswith("gauge_live") and name.endswith(".db"):
            tail = name[: -len(".db")].rsplit("_", 1)[-1]
            if tail.isdigit():
                pids.add(int(tail))
    for pid in pids:
        if not pid_runs(pid):
            with contextlib.suppress(FileNotFoundError):  # another scrape removed it first
                multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def process_exited(pid: int) -> None:
    """Drop a finished process's live gauges (gunicorn `child_exit`, worker shutdown)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

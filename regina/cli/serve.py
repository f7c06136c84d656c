"""Server commands: `regina web`, `regina worker`, `regina flower` (each execs its server).

Web and Flower listen on `regina.config.bind_host`: the configured `host`; 0.0.0.0 only when
`PORT` is set *and* a platform marker is (a hosting platform routes to the app from outside);
otherwise 127.0.0.1, with a line saying how to listen on every interface. `honcho start` sets
`PORT` on a laptop too, where 0.0.0.0 would expose an unauthenticated API to the network.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import click

from regina import keys
from regina.config import PLATFORM_MARKERS, Settings, bind_host, environment, load_settings, process_settings
from regina.errors import ConfigError
from regina.redis_conn import embedded_redis_url


def settings_or_exit(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings (this process's, or those of `environ`), or exit 2 naming the bad key."""
    try:
        return process_settings() if environ is None else load_settings(environ)
    except ConfigError as exc:
        raise click.UsageError(f"bad configuration: {exc.message}") from exc


#: A TCP port given on the command line (click's own message for 0 or 99999, not an OverflowError).
PORT_RANGE = click.IntRange(1, 65535)


class StartError(click.ClickException):
    """A setting the processes about to start cannot run with: one line, exit status 2."""

    exit_code = 2


def check_startable(settings: Settings) -> None:
    """Fail here, in one line, on an `agentsDir` or `factory` the web and workers cannot load:
    inside them it is a traceback per gunicorn worker and a worker that never joins."""
    from regina.factory_hooks import load_hooks
    from regina.registry import AgentRegistry

    try:
        AgentRegistry(settings).build()
        load_hooks(settings.factory)
    except ConfigError as exc:
        raise StartError(f"bad configuration: {exc.message}") from exc


def bind_note(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """What to log when `PORT` is set but the server stays on 127.0.0.1 (see `bind_host`)."""
    explicit = "host" in settings.model_fields_set
    if environ.get("PORT") and not explicit and bind_host(settings, environ) == "127.0.0.1":
        return (
            f"PORT is set but no platform marker ({', '.join(PLATFORM_MARKERS)}) is: listening on 127.0.0.1 "
            "only; set REGINA_HOST=0.0.0.0 to listen on every interface"
        )
    return None


def _exec(argv: list[str], env: Mapping[str, str] | None = None) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, dict(env if env is not None else environment()))


def _set_log_format(fmt: str | None) -> None:
    if fmt:  # before the settings are loaded: `--log-format` is config `logFormat`
        os.environ.update(REGINA_LOG_FORMAT=fmt)


log_format_option = click.option(
    "--log-format", type=click.Choice(["text", "json"]), help="Log line format (config `logFormat`)."
)


def metrics_dir(env: MutableMapping[str, str], port: int) -> str:
    """PROMETHEUS_MULTIPROC_DIR for a web process: the given one, or a fresh one per port.

    gunicorn's workers each count in this directory and `/metrics` sums them (prometheus_client's
    multiprocess mode); workers started with the same variable (as `regina up` does) add theirs.
    """
    given = env.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        return given
    path = Path(tempfile.gettempdir()) / f"regina-metrics-{os.getuid()}-{port}"
    shutil.rmtree(path, ignore_errors=True)  # counts of a previous run must not be added again
    path.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return str(path)


def web_argv(settings: Settings, workers: int | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """gunicorn with gevent workers, so streams and long chats don't hold OS threads."""
    count = workers or settings.web_concurrency
    host = bind_host(settings, environ)
    # No access log unless asked for: gunicorn formats every line even for /dev/null.
    access = ["--access-logfile", "-"] if settings.access_log else []
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "api.wsgi:app",
        "--config",
        "python:gunicorn_conf",
        "--worker-class",
        "gunicorn_conf.ReginaWebWorker",
        "--workers",
        str(count),
        "--worker-connections",
        "1000",
        # gunicorn answers longer request lines itself (a 400, its message); up to its maximum Flask's 404.
        "--limit-request-line",
        "8190",
        "--bind",
        f"{host}:{settings.port}",
        "--timeout",
        "0",
        "--graceful-timeout",
        "30",
        # Idle keep-alive connections stay open longer than clients pool them (httpx and Node 5 s,
        # load balancers 60 s): gunicorn's 2 s default closes them under the client's next
        # request, which then fails with "server disconnected". Idle ones cost a greenlet each.
        "--keep-alive",
        "75",
        "--log-level",
        settings.log_level.lower(),
        *access,
    ]


def default_member_id() -> str:
    """`w<pid>-<random>@<host>`: unique per worker process, also its Celery node name."""
    return f"w{os.getpid()}-{secrets.token_hex(3)}@{socket.gethostname()}"


def worker_argv(settings: Settings, member_id: str | None = None, concurrency: int | None = None) -> list[str]:
    """celery worker with the gevent pool, consuming only the member's own command queue."""
    member = member_id or settings.member_id or default_member_id()
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--pool",
        "gevent",
        "--concurrency",
        str(concurrency or settings.concurrency),
        "--hostname",
        member,
        "--queues",
        keys.member_queue(member),
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        settings.log_level.upper(),
    ]
    if settings.task_events:
        argv.append("--task-events")
    else:
        argv.append("--without-heartbeat")
    return argv


def flower_argv(port: int, host: str) -> list[str]:
    """Flower through `workers.monitor`: our Celery app on kombu's stock Redis transport."""
    return [sys.executable, "-m", "celery", "-A", "workers.monitor", "flower", f"--port={port}", f"--address={host}"]


@click.command()
@click.option("--workers", type=int, help="gunicorn worker processes (default WEB_CONCURRENCY or 2).")
@log_format_option
def web(workers: int | None, log_format: str | None) -> None:
    """The HTTP API (gunicorn + gevent); reads PORT, REDIS_URL, REGINA_CONFIG."""
    _set_log_format(log_format)
    settings = settings_or_exit()
    check_startable(settings)
    env = dict(environment())
    note = bind_note(settings, env)
    if note:
        click.echo(f"regina web: {note}", err=True)
    metrics_dir(env, settings.port)
    _exec(web_argv(settings, workers), env)


@click.command()
@click.option("--member-id", help="Member id / Celery node name (default: unique per process).")
@click.option("--concurrency", type=int, help="Greenlets (default: config `concurrency`, 100).")
@log_format_option
def worker(member_id: str | None, concurrency: int | None, log_format: str | None) -> None:
    """A Celery worker (gevent pool) that joins the cluster as a member."""
    _set_log_format(log_format)
    settings = settings_or_exit()
    check_startable(settings)
    given = environment().get("PROMETHEUS_MULTIPROC_DIR")
    if given:  # its counters are written there from the first increment (a web may not have made it)
        os.makedirs(given, exist_ok=True)
    _exec(worker_argv(settings, member_id, concurrency))


@click.command()
@click.option("--port", type=PORT_RANGE, help="HTTP port (default: PORT, else 5555).")
@log_format_option
def flower(port: int | None, log_format: str | None) -> None:
    """Flower, the Celery monitor, on the cluster's Redis (or the one `regina up` started)."""
    _set_log_format(log_format)
    given = environment()
    env = {k: v for k, v in given.items() if k != "PORT"}  # the web's port is no setting of Flower's
    settings = settings_or_exit(env)
    host = bind_host(settings, given)
    note = bind_note(settings, given)
    if note:
        click.echo(f"regina flower: {note}", err=True)
    chosen = port or int(given.get("PORT") or 5555)
    env["REDIS_URL"] = embedded_redis_url(settings, env)
    _exec(flower_argv(chosen, host), env)

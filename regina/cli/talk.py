"""Client commands (SPEC §9): talk to a running server over HTTP through `regina.client`.

`regina agents`, `ps`, `chat`, `steer`, `suspend`, `resume`, `rm`, `reload`. Each takes `--url`
(env `REGINA_URL`) and `--token` (env `REGINA_TOKEN`); an API error prints its message on stderr
and exits 1. Output is plain when stdout is not a terminal (rich detects it), so it pipes well.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from regina.client import ClientError, ReginaClient, RunStream, utf8_text
from regina.environ import environment
from regina.errors import ReginaError
from regina.ids import is_valid_instance_id

DEFAULT_URL = "http://127.0.0.1:3000"
RESULT_WIDTH = 120
"""A tool result is shown on one line of at most this many characters."""

F = TypeVar("F", bound=Callable[..., Any])


class ApiError(click.ClickException):
    """An API or connection error: `regina: <message>` on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"regina: {self.message}", err=True)


URL_HELP = f"Server URL (env REGINA_URL; default {DEFAULT_URL})."
TOKEN_HELP = "Bearer token (env REGINA_TOKEN)."


def server_options(f: F) -> F:
    """`--url` / `--token` for a command that talks to a server. Either may also come before the
    command (`regina --url … ps`, SPEC §9); the command's own wins, then the group's, then the
    environment, then the default."""

    @functools.wraps(f)
    def resolved(*args: Any, url: str | None, token: str | None, **kwargs: Any) -> Any:
        group = click.get_current_context().find_root().params  # `main`'s (env and default applied)
        env = environment()
        if url is None:
            url = group.get("url") or env.get("REGINA_URL") or DEFAULT_URL
        if token is None:
            token = group.get("token") or env.get("REGINA_TOKEN") or None
        return f(*args, url=url, token=token, **kwargs)

    command = click.option("--token", help=TOKEN_HELP)(resolved)
    return cast(F, click.option("--url", help=URL_HELP)(command))


@contextmanager
def connect(url: str, token: str | None) -> Iterator[ReginaClient]:
    """A client whose errors end the command with exit status 1 and the message on stderr (the
    client raises only its own errors: unreachable server, bad URL or token, an answer that is
    not JSON). Every argument of the command is checked first (`check_arguments`)."""
    try:
        check_arguments()
        with ReginaClient(url, token=token) as client:
            yield client
    except ReginaError as exc:
        raise ApiError(exc.message) from exc
    except UnicodeError as exc:  # printing text the terminal's encoding cannot show, say
        raise ApiError(str(exc)) from exc


def check_arguments() -> None:
    """InvalidArgument for an argument or option of the running command that is not UTF-8 text
    (e.g. `regina chat demo $'\\x85'`): before any request, so a chat spawns no instance it
    cannot then use, and `rm a <bad>` removes none."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for param in ctx.command.params:
        if param.name == "token":
            continue  # the client checks it, and says so without showing any of it
        value = ctx.params.get(param.name or "")
        name = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name.rstrip(".")
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str):
                utf8_text(text, name)


def _console(**options: Any) -> Console:
    """The console output goes through: a model's text and the server's names are printed as
    they are, with no `:smile:` emoji codes replaced, no [markup] read, no highlighting."""
    return Console(soft_wrap=True, highlight=False, emoji=False, markup=False, **options)


def print_table(headers: list[str], rows: list[list[str]], console: Console | None = None) -> None:
    """An aligned table on a terminal; tab-separated lines (header first) in a pipe. The first
    column (a name or id, to copy into the next command) is always whole; on a narrow terminal the
    others fold onto more lines."""
    console = console or _console()
    if not console.is_terminal:
        for row in [headers, *rows]:
            click.echo("\t".join(row))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    first = max(len(row[0]) for row in [headers, *rows])
    table.add_column(headers[0], no_wrap=True, min_width=first)
    for header in headers[1:]:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # a cell as it is (a str would be read as markup)
    console.print(table)


def one_line(value: Any, width: int = RESULT_WIDTH) -> str:
    """A tool argument or result cut to one line (`…` marks what was left out)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    lines = text.strip().splitlines() or [""]
    first = lines[0]
    if len(first) > width or len(lines) > 1:
        return first[: width - 1] + "…"
    return first


class StreamPrinter:
    """Prints a run's events: text as it comes, `→ tool args` and `← result` lines."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.at_line_start = True
        self.streamed = False
        self.error: str | None = None
        self.events = 0
        """Events printed so far."""

    def _line(self, text: str, style: str) -> None:
        if not self.at_line_start:
            self.console.print()
        self.console.print(Text(text, style=style if self.console.is_terminal else ""))
        self.at_line_start = True

    def event(self, ev: dict[str, Any]) -> None:
        self.events += 1
        kind = ev.get("type")
        if kind == "text-delta":
            delta = str(ev.get("textDelta", ""))
            self.console.print(delta, end="", markup=False)
            self.streamed = self.streamed or bool(delta)
            self.at_line_start = delta.endswith("\n") if delta else self.at_line_start
        elif kind == "tool-call":
            self._line(f"→ {ev.get('toolName')} {one_line(ev.get('args', {}), 200)}", "cyan")
        elif kind == "tool-result":
            self._line(f"← {one_line(ev.get('result'))}", "dim")
        elif kind == "steer-applied":
            self._line(f"↪ steer: {one_line(ev.get('message', ''))}", "magenta")
        elif kind == "tool-degraded":
            self._line(f"! {ev.get('server')}: {one_line(ev.get('error'))}", "yellow")
        elif kind == "finish":
            if not self.streamed and ev.get("text"):
                self.console.print(str(ev["text"]), end="", markup=False)
                self.at_line_start = False
            reason = ev.get("finishReason")
            if reason not in (None, "stop", "tool-calls", "length"):
                self._line(f"[{reason}]", "yellow")
        elif kind == "error":
            self.error = str(ev.get("error", "run failed"))

    def end(self) -> None:
        if not self.at_line_start:
            self.console.print()
            self.at_line_start = True


@click.command()
@server_options
def agents(url: str, token: str | None) -> None:
    """List the agent definitions the server loaded."""
    with connect(url, token) as client:
        rows = client.agents()
    shown = []
    for a in rows:
        missing = a.get("missingKey")
        ready = f"no: {missing} not set" if missing else "yes"
        tools = ",".join(map(str, a.get("tools") or [])) or "-"
        shown.append([str(a.get("id")), str(a.get("provider") or "-"), str(a.get("model")), tools, ready])
    print_table(["NAME", "PROVIDER", "MODEL", "TOOLS", "READY"], shown)


@click.command()
@click.option("--agent", help="Only instances of this agent.")
@server_options
def ps(agent: str | None, url: str, token: str | None) -> None:
    """The fleet: id, agent, status, member and last activity of every instance."""
    with connect(url, token) as client:
        rows = list(client.fleet(agent=agent))  # GET /instances?agent=…, every page
    shown = []
    for i in rows:
        last = str(i.get("lastActive") or i.get("lastActiveAt") or "-")
        row = [i["instanceId"], i.get("definitionId", "-"), i.get("status", "-"), i.get("member") or "-", last]
        shown.append([str(cell) for cell in row])
    print_table(["ID", "AGENT", "STATUS", "MEMBER", "LAST ACTIVE"], shown)


@click.command()
@click.argument("target", metavar="AGENT_OR_INSTANCE")
@click.argument("message")
@server_options
def chat(target: str, message: str, url: str, token: str | None) -> None:
    """Send MESSAGE and stream the answer; an agent name spawns an instance first (its id is printed).

    Ctrl-C cancels the run on the server and exits with status 130."""
    if not message.strip():
        raise ApiError("the message must not be empty")  # checked before a spawn: no instance left behind
    console = _console()
    with connect(url, token) as client:
        instance_id = target
        spawned = not is_valid_instance_id(target)
        if spawned:
            instance_id = _spawn_or_exit_130(client, target)
            console.print(Text(f"instance {instance_id}", style="bold" if console.is_terminal else ""))
        printer = StreamPrinter(console)
        # How a Ctrl-C finds this chat's run (_cancel_interrupted); the server keeps a keyed run 24 h.
        key = f"regina-chat-{uuid.uuid4().hex}"
        events = client.stream(instance_id, message, idempotency_key=key)
        try:
            for ev in events:
                printer.event(ev)
        except ClientError as exc:
            if spawned and 400 <= exc.status < 500 and printer.events == 0:
                _remove_spawned(client, instance_id)
            raise
        except KeyboardInterrupt:
            printer.end()
            _cancel_interrupted(url, token, events, Sent(instance_id, message, key))
        finally:
            printer.end()
    if printer.error is not None:
        raise ApiError(printer.error)


def _spawn(client: ReginaClient, agent: str) -> str:
    """A new instance of `agent`; its id, or ApiError when the answer does not name one."""
    answer = client.spawn(agent)
    instance_id = answer.get("instanceId") if isinstance(answer, dict) else None
    if not isinstance(instance_id, str) or not is_valid_instance_id(instance_id):
        shown = one_line(answer, 200)
        raise ApiError(f"the server's answer to spawning {agent!r} names no instance (no instanceId): {shown}")
    return instance_id


def _spawn_or_exit_130(client: ReginaClient, agent: str) -> str:
    """`_spawn`; Ctrl-C while it waits exits 130 like the rest of `chat` (the request is let go:
    the server may have created the instance anyway, and the message says where to look)."""
    try:
        return _spawn(client, agent)
    except KeyboardInterrupt:
        click.echo(
            f"regina: interrupted while spawning; an instance of {agent} may have been created "
            f"(regina ps --agent {agent})",
            err=True,
        )
        raise click.exceptions.Exit(130) from None


def _remove_spawned(client: ReginaClient, instance_id: str) -> None:
    """Delete the instance this command spawned for a chat the server refused (4xx)."""
    try:
        client.delete(instance_id)
    except ReginaError as exc:
        click.echo(f"regina: could not delete instance {instance_id}: {exc.message}", err=True)
    else:
        click.echo(f"regina: deleted instance {instance_id} (spawned for this chat)", err=True)


#: Seconds a Ctrl-C waits for the server to take the run's cancel.
CANCEL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Sent:
    """What a chat sent: enough to send it again, with its Idempotency-Key."""

    instance_id: str
    message: str
    key: str


def _cancel_interrupted(url: str, token: str | None, events: RunStream, sent: Sent) -> None:
    """Ctrl-C: cancel the run on the server (it would go on otherwise), say so, exit 130. The
    interrupted stream is let go first, and the cancel goes on a client of its own with a short
    timeout: whatever the interrupt left half done in the stream's client cannot hold it up.

    The run may exist before its id reached us (the server created it; its `X-Run-Id` header
    was still on the way). It is found by sending the chat again with the same Idempotency-Key,
    which names the key's run and never starts a second one; only when the first request never
    arrived does it start the run, cancelled at once like the one asked for. Not the instance's
    `runningRun`: that is another client's run while ours waits in the queue behind it."""
    run_id = events.run_id
    try:
        events.close()
    except Exception:  # noqa: BLE001 - a connection the interrupt left broken: dropped anyway
        pass
    try:
        with ReginaClient(url, token=token, timeout=CANCEL_TIMEOUT) as client:
            if run_id is None:
                run_id = client.start(sent.instance_id, sent.message, idempotency_key=sent.key)
            answer = client.cancel(run_id)
    except ReginaError as exc:
        if run_id is None:
            click.echo(
                f"regina: interrupted; this chat's run may go on (it could not be found: {exc.message}); "
                f"GET /instances/{sent.instance_id} shows the instance's runningRun, "
                "POST /runs/<runId>/cancel stops a run",
                err=True,
            )
        else:
            click.echo(f"regina: interrupted; could not cancel run {run_id}: {exc.message}", err=True)
    else:
        if answer.get("cancelled") is False:
            click.echo(f"regina: interrupted; run {run_id} had ended ({answer.get('status')})", err=True)
        else:
            click.echo(f"regina: interrupted; cancelled run {run_id}", err=True)
    raise click.exceptions.Exit(130)


@click.command()
@click.argument("instance")
@click.argument("message")
@server_options
def steer(instance: str, message: str, url: str, token: str | None) -> None:
    """Queue MESSAGE for the instance's running (or next) run; prints its steerId receipt."""
    with connect(url, token) as client:
        receipt = client.steer(instance, message)
    steer_id = receipt.get("steerId") if isinstance(receipt, dict) else None
    click.echo(f"steering message queued for {instance}" + (f" ({steer_id})" if steer_id else ""))


def _each(verb: str, action: Callable[[ReginaClient, str], str | None]) -> Callable[..., None]:
    """A command over instance ids; each done is a line: the action's own (what happened, when
    it can differ), or `<verb> <id>`."""

    @click.argument("instances", nargs=-1, required=True, metavar="INSTANCE...")
    @server_options
    def command(instances: tuple[str, ...], url: str, token: str | None) -> None:
        failed = 0
        with connect(url, token) as client:
            for iid in instances:
                try:
                    done = action(client, iid)
                except ReginaError as exc:  # said, and the next ones are still done
                    click.echo(f"regina: {iid}: {exc.message}", err=True)
                    failed += 1
                else:
                    click.echo(done or f"{verb} {iid}")
        if failed:
            click.echo(f"regina: {failed} of {len(instances)} failed", err=True)
            raise click.exceptions.Exit(1)

    return command


def _suspend(client: ReginaClient, instance_id: str) -> str:
    """What the server said: suspended, or suspending (202: its owner finishes a step first)."""
    status = client.suspend(instance_id)["status"]
    return f"{status} {instance_id}" + (" (after its running step)" if status == "suspending" else "")


suspend = click.command("suspend", help="Back up and release instances (`suspending`: once a running step is done).")(
    _each("suspended", _suspend)
)
resume = click.command("resume", help="Start suspended instances again.")(_each("resumed", lambda c, i: c.resume(i)))
rm = click.command("rm", help="Delete instances with their files and backups.")(
    _each("deleted", lambda c, i: c.delete(i))
)


@click.command()
@server_options
def reload(url: str, token: str | None) -> None:
    """Reload the agent definitions in every web and worker process."""
    with connect(url, token) as client:
        result = client.reload()
    names = result["agents"]  # the client checked the answer's shape
    click.echo(f"{len(names)} agent(s): {', '.join(names)}")
    for err in result["errors"]:
        click.echo(f"skipped: {err.get('error') or err.get('file')}", err=True)  # the error names the file

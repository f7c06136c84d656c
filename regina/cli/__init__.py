"""`regina` command line.

Server commands start processes (`up`, `web`, `worker`, `flower`; regina/cli/serve.py and
regina/cli/up.py); client commands talk to a running server over HTTP (`agents`, `ps`, `chat`,
`steer`, `suspend`, `resume`, `rm`, `reload`; regina/cli/talk.py). Neither imports Flask or Celery.
A command's module is imported when the command runs (click's lazy group): a client command does
not load the settings models and Redis, which the server commands need.
"""

from __future__ import annotations

import importlib

import click

from regina.cli import talk

__all__ = ["main"]

#: Each command → the module that defines it (the command is that module's attribute of its name).
COMMAND_MODULES = {
    "up": "regina.cli.up",
    **dict.fromkeys(["web", "worker", "flower"], "regina.cli.serve"),
    **dict.fromkeys(["agents", "ps", "chat", "steer", "suspend", "resume", "rm", "reload"], "regina.cli.talk"),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when looked up (by name, or all of them for `--help`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command), cmd_name
        return command


EPILOG = """\b
Environment:
  REGINA_URL      server the client commands talk to (default http://127.0.0.1:3000)
  REGINA_TOKEN    bearer token for the client commands
  REGINA_CONFIG   path of a JSON/YAML config file (its `regina` object, or the whole file)
  REDIS_URL       Redis to use (`regina up` starts an embedded one when unset)
  PORT            HTTP port of the web process (default 3000)
  REGINA_<KEY>    any config key, upper snake case, `__` for nesting (REGINA_STORAGE__TYPE=fs)
See docs/configuration.md for every key.
"""


_ALSO_AFTER = "For the client commands; also after the command."


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option("--url", envvar="REGINA_URL", default=talk.DEFAULT_URL, help=f"{talk.URL_HELP} {_ALSO_AFTER}")
@click.option("--token", envvar="REGINA_TOKEN", help=f"{talk.TOKEN_HELP} {_ALSO_AFTER}")
def main(url: str | None, token: str | None) -> None:
    """Run many long-lived AI agent instances on Celery workers behind a Flask API."""


if __name__ == "__main__":
    main()

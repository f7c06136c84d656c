"""`regina` command line.

Server commands start processes (`up`, `web`, `worker`, `flower`; regina/cli/serve.py and
regina/cli/up.py); client commands talk to a running server over HTTP (`agents`, `ps`, `chat`,
`steer`, `suspend`, `resume`, `rm`, `reload`; regina/cli/talk.py). Neither imports Flask or Celery.
"""

from __future__ import annotations

import click

from regina.cli import serve, talk
from regina.cli.serve import web_argv, worker_argv
from regina.cli.up import up

__all__ = ["main", "web_argv", "worker_argv"]

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option("--url", envvar="REGINA_URL", default=talk.DEFAULT_URL, help=f"{talk.URL_HELP} {_ALSO_AFTER}")
@click.option("--token", envvar="REGINA_TOKEN", help=f"{talk.TOKEN_HELP} {_ALSO_AFTER}")
def main(url: str | None, token: str | None) -> None:
    """Run many long-lived AI agent instances on Celery workers behind a Flask API."""


for _command in [up, *serve.COMMANDS, *talk.COMMANDS]:
    main.add_command(_command)

if __name__ == "__main__":
    main()

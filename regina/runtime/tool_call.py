"""One tool call as the agent loop makes it: run the tool where its runner puts it, turn every
failure into `{"error": ...}` for the model, cut the output to the model's limit, and join two
interrupters into one for the stretch the tool runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from regina.errors import ReginaError
from regina.runtime.messages import encode_result
from regina.runtime.tools.base import Tool
from regina.runtime.tools.runner import InlineRunner, ToolRunner
from regina.secrets import redact, redact_any

log = logging.getLogger("regina.runtime.loop")  # the loop's log, as before the move

#: Tools run on the caller's thread (the loop's default when the host gives no runner).
INLINE = InlineRunner()


def error_result(message: str) -> dict[str, str]:
    return {"error": message}


def run_tool(tools: dict[str, Tool], name: str, args: dict[str, Any], runner: ToolRunner = INLINE) -> Any:
    """Run one tool where `runner` puts it; every failure becomes `{"error": ...}` for the model."""
    tool = tools.get(name)
    if tool is None:
        return error_result(f"unknown tool {name!r}; available tools: {', '.join(sorted(tools)) or 'none'}")
    if set(args) == {"_raw"}:
        return error_result(f"arguments for tool {name!r} are not a valid JSON object: {str(args['_raw'])[:200]}")
    try:
        return runner.run(tool, args)
    except ReginaError as exc:
        return error_result(exc.message)
    except Exception as exc:  # a tool's own bug: report it to the model, keep the run going
        log.warning("tool %s failed", name, exc_info=True)
        return error_result(f"tool {name!r} failed: {type(exc).__name__}: {exc}")


#: Characters past a truncated result's cut that are scanned for secrets with it (longer than any
#: credential: a secret across the cut is replaced whole, not shown in part).
CUT_MARGIN = 8192


def limit_output(result: Any, limit: int) -> tuple[Any, str]:
    """(result for the event, content for the model), secrets redacted (SPEC §10: a tool may echo
    a credential, an MCP server's error its URL's), truncated to `limit` characters."""
    content, as_json = encode_result(result)
    if len(content) > limit:
        # Only what is shown is scanned (a result of megabytes scanned whole held the worker's
        # loop): the cut plus a margin, so a secret across the cut is replaced whole.
        cut = redact(content[: limit + CUT_MARGIN])[:limit]
        cut += f"\n…[truncated: {len(content) - limit} more characters]"
        return cut, cut
    redacted = redact(content)
    if redacted != content:
        content, result = redacted, redact_any(result)
    if not as_json:
        result = content  # the event shows what the model sees (a string: it always encodes)
    return result, content


class BothInterrupters:
    """Two interrupters as one (closing the second when the stretch ends)."""

    def __init__(self, first: Callable[[], None], second: Callable[[], None]) -> None:
        self.first, self.second = first, second

    def __call__(self) -> None:
        self.first()
        self.second()

    def close(self) -> None:
        close = getattr(self.second, "close", None)
        if close is not None:
            close()

"""The Tool type and the `@tool` decorator used by custom tool modules (SPEC §2).

A tool is a named function with a pydantic parameters model. Sync and async functions are
both accepted; the runtime calls `Tool.invoke(args)` and gets a JSON-able result back.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from regina.errors import ToolError

ToolFn = Callable[..., Any]


@functools.lru_cache(maxsize=1024)
def _parameters_schema(model: type[BaseModel]) -> dict[str, Any]:
    """JSON schema of a parameters model, generated once per model (tools are rebuilt per attach)."""
    return model.model_json_schema()


@dataclass
class Tool:
    """A callable the model may use: name, description, parameters model and function."""

    name: str
    description: str
    parameters: type[BaseModel]
    fn: ToolFn
    #: Extra JSON schema used instead of the model's when set (MCP tools bring their own).
    json_schema: dict[str, Any] | None = field(default=None)
    #: Run on the caller's own thread and event loop, not in a tool thread or process: for
    #: I/O-bound tools whose state lives on the worker's loop (MCP sessions).
    inline: bool = field(default=False)
    _schema_json: str | None = field(default=None, init=False, repr=False, compare=False)
    _schema: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_async(self) -> bool:
        """True when `fn` is a coroutine function and must run on an event loop."""
        return inspect.iscoroutinefunction(self.fn)

    def schema(self) -> dict[str, Any]:
        """Return the OpenAI-style function schema LiteLLM sends to the model: a fresh copy, the
        caller's to edit (see `shared_schema`)."""
        schema: dict[str, Any] = json.loads(self._encoded_schema())
        return schema

    def shared_schema(self) -> dict[str, Any]:
        """`schema`, decoded once and shared by every call: nobody may edit it. The loop offers
        it to every model call; the routes copy what they hand to LiteLLM, whose provider
        transforms may edit it (a fresh copy per step cost four JSON decodes per chat)."""
        if self._schema is None:
            self._schema = self.schema()
        return self._schema

    def schema_chars(self) -> int:
        """Characters of the schema as sent: its share of every request's prompt."""
        return len(self._encoded_schema())

    def _encoded_schema(self) -> str:
        """pydantic's schema generation costs ~0.5 ms per tool, so it runs once."""
        if self._schema_json is None:
            params = self.json_schema or _parameters_schema(self.parameters)
            self._schema_json = json.dumps(
                {
                    "type": "function",
                    "function": {"name": self.name, "description": self.description, "parameters": params},
                }
            )
        return self._schema_json

    def validate(self, args: dict[str, Any]) -> BaseModel:
        """Validate raw arguments from the model; ToolError with a readable message if bad."""
        try:
            return self.parameters.model_validate(args)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(args)'}: {e['msg']}" for e in exc.errors())
            raise ToolError(f"invalid arguments for tool {self.name!r}: {problems}") from exc

    def call_sync(self, args: dict[str, Any]) -> Any:
        """Validate and call a sync tool (async tools go through `call_async`)."""
        return self.fn(self.validate(args))

    async def call_async(self, args: dict[str, Any]) -> Any:
        """Validate and call the tool from async code (sync tools are called directly)."""
        result = self.fn(self.validate(args))
        if isinstance(result, Awaitable):
            return await result
        return result


def tool(*, description: str, parameters: type[BaseModel], name: str | None = None) -> Callable[[ToolFn], Tool]:
    """Turn a function taking one pydantic model into a Tool.

    The name defaults to the module file's stem when loaded from a `tools:` path (the loader
    renames it); otherwise to the function's name.
    """

    def wrap(fn: ToolFn) -> Tool:
        return Tool(name=name or fn.__name__, description=description, parameters=parameters, fn=fn)

    return wrap

"""LiteLLM, imported lazily (it costs seconds) and configured once for low per-call overhead.

No callbacks, no telemetry, no message logging, no cost calculation, no retries (a retry in the
middle of a stream would duplicate deltas the client already saw). The offline demo model is
registered as a LiteLLM custom provider in the same step, so a `demo` target can be called at once.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from regina.providers import import_litellm

__all__ = ["get_litellm", "preload_litellm"]

_litellm: Any = None
_litellm_lock = threading.Lock()


def get_litellm() -> Any:
    """Import and configure LiteLLM once (thread-safe); later calls return the module."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _litellm_lock:
        if _litellm is None:
            litellm = import_litellm()

            # The demo module subclasses LiteLLM's CustomLLM, so it is imported with LiteLLM.
            from regina.runtime.models.demo import register_demo_provider

            _configure(litellm)
            register_demo_provider()
            _litellm = litellm
    return _litellm


#: LiteLLM's module settings Regina sets: no retries, no telemetry, logging, cost or token counting.
_SETTINGS: dict[str, Any] = {
    "drop_params": True,
    "telemetry": False,
    "suppress_debug_info": True,
    "set_verbose": False,
    "turn_off_message_logging": True,
    "disable_streaming_logging": True,
    "logging": False,
    "include_cost_in_streaming_usage": False,
    "disable_end_user_cost_tracking": True,
    "disable_token_counter": True,
    "num_retries": 0,
}
#: LiteLLM's callback lists, emptied (Regina runs no callbacks).
_CALLBACK_LISTS = (
    "success_callback",
    "failure_callback",
    "callbacks",
    "input_callback",
    "_async_success_callback",
    "_async_failure_callback",
)


class _PauseBetweenModules:
    """A meta path finder that finds nothing: it calls `pause` before each module is looked up."""

    def __init__(self, pause: Callable[[], None]) -> None:
        self.pause = pause

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        self.pause()
        return None


def preload_litellm(pause: Callable[[], None], before: Sequence[str] = ()) -> None:
    """`get_litellm()` (after importing the modules named in `before`), calling `pause` before
    each of the ~2 000 modules it imports.

    A worker runs this in a greenlet once it has joined the cluster, with `pause` waiting for an
    idle event loop (`gevent.idle`: the import goes on only when nothing else is ready to run):
    the import (seconds of CPU) no longer delays "ready", and the worker's other greenlets
    (heartbeat, commands, attaches) get a turn between modules instead of waiting seconds. A step
    that needs LiteLLM meanwhile waits for it on `get_litellm`'s lock. Rule that keeps this safe:
    code imports LiteLLM, or a package only LiteLLM brings (openai, aiohttp, tiktoken), through
    `get_litellm()` first — two greenlets importing one package's modules at once can meet
    half-initialized modules.
    """
    finder = _PauseBetweenModules(pause)
    sys.meta_path.insert(0, finder)
    try:
        for name in before:
            importlib.import_module(name)
        get_litellm()
    finally:
        sys.meta_path.remove(finder)


def _configure(litellm: Any) -> None:
    for name, value in _SETTINGS.items():
        setattr(litellm, name, value)
    for name in _CALLBACK_LISTS:
        setattr(litellm, name, [])
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)

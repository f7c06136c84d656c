"""LiteLLM, imported lazily (it costs seconds) and configured once for low per-call overhead.

No callbacks, no telemetry, no message logging, no cost calculation, no retries (a retry in the
middle of a stream would duplicate deltas the client already saw). The offline demo model is
registered as a LiteLLM custom provider in the same step, so a `demo` target can be called at once.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

__all__ = ["get_litellm"]

_litellm: Any = None
_litellm_lock = threading.Lock()


def get_litellm() -> Any:
    """Import and configure LiteLLM once (thread-safe); later calls return the module."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _litellm_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_LOG", "ERROR")
            # LiteLLM's own httpx handler for the OpenAI route instead of the OpenAI SDK, whose
            # request transform costs ~0.18 ms of CPU per history message (23 ms at 100 messages,
            # 4.4 ms with this handler; docs/benchmarks.md). Set it to "false" to use the SDK.
            os.environ.setdefault("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "true")
            import litellm

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


def _configure(litellm: Any) -> None:
    for name, value in _SETTINGS.items():
        setattr(litellm, name, value)
    for name in _CALLBACK_LISTS:
        setattr(litellm, name, [])
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)

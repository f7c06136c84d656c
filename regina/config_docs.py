"""Render the configuration reference (docs/configuration.md) from the Settings docstrings."""

from __future__ import annotations

import re
import sys
from typing import Any

from pydantic import BaseModel

from regina.config import Settings


def _env_name(path: list[str]) -> str:
    return "REGINA_" + "__".join(re.sub(r"(?<!^)(?=[A-Z])", "_", p).upper() for p in path)


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
        return f"`{value!r}`"
    return "—" if field.default is None else f"`{field.default!r}`"


def _rows(model: type[BaseModel], prefix: list[str]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        path = [*prefix, alias]
        annotation = field.annotation
        doc = (field.description or "").replace("\n", " ")
        rows.append(f"| `{'.'.join(path)}` | `{_env_name(path)}` | {_default(field)} | {doc} |")
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, path))
    return rows


def render() -> str:
    """The whole reference as Markdown."""
    head = [
        "# Configuration reference",
        "",
        "Generated from `regina/config.py` by `python -m regina.config_docs > docs/configuration.md`.",
        "",
        "Settings come from the file named by `REGINA_CONFIG` (JSON or YAML; its `regina` object if it",
        "has one, else the whole file), then `REDIS_URL` and `PORT` as a platform sets them, then",
        "`REGINA_<KEY>` variables (upper snake case, `__` for nesting; values are read as YAML, so",
        "`REGINA_ALLOWED_ENV='[PATH, LANG]'` is a list). Later sources win. A bad value stops the",
        "process at start with a message naming the key (a boolean for a number is one: `true` is",
        "not 1).",
        "",
        "Provider keys and base URLs: `ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, `AI_GATEWAY_API_KEY`,",
        "`ANTHROPIC_BASE_URL`, `OPENAI_BASE_URL`, `AI_GATEWAY_BASE_URL` (these win over",
        "`providers.<name>.baseUrl`). Provider names under `providers` are env-encoded with `_` for",
        "`-`: `REGINA_PROVIDERS__VERCEL_GATEWAY__BASE_URL`.",
        "",
        "LiteLLM's own variables keep Regina's defaults unless set: `LITELLM_LOCAL_MODEL_COST_MAP=True`",
        "(its bundled model cost map, no download at start), `LITELLM_LOG=ERROR`, and",
        "`EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER=true` (LiteLLM's httpx handler for OpenAI models",
        "that Regina's direct route does not serve; `false` uses the OpenAI SDK).",
        "",
        "| key | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    return "\n".join(head + _rows(Settings, [])) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())

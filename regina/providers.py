"""Which LLM provider serves a model, and how LiteLLM reaches it (SPEC §2).

Provider inference, for definitions that leave `provider` out (first match wins):

1. the model contains `/`                        → `vercel-gateway`
2. it starts with `claude` or `anthropic`        → `anthropic`
3. it starts with `gpt`, `o1`, `o3` or `o4`      → `openai`
4. anything else                                 → `DefinitionError` asking for `provider:`

Rule 1 comes first although SPEC §2 lists it last: both SPEC §2 and the seed give
`anthropic/claude-sonnet-4-5` as an example *model id*, and the seed's provider table says that a
model containing `/` "(e.g., anthropic/claude-sonnet-4-5)" is a Vercel AI Gateway model
(`<creator>/<model>` is the gateway's id format). Checking the `anthropic` prefix first would send
that id to Anthropic's own API, which does not know it. Matching is case-insensitive.

Providers:

| provider         | LiteLLM prefix        | key env              | base URL env          |
|------------------|-----------------------|----------------------|-----------------------|
| `anthropic`      | `anthropic/`          | `ANTHROPIC_API_KEY`  | `ANTHROPIC_BASE_URL`  |
| `openai`         | `openai/`             | `OPENAI_API_KEY`     | `OPENAI_BASE_URL`     |
| `vercel-gateway` | `vercel_ai_gateway/`  | `AI_GATEWAY_API_KEY` | `AI_GATEWAY_BASE_URL` |
| `demo`           | `regina-demo/`        | none                 | none                  |
| any other LiteLLM provider `p` | `p/`    | `P_API_KEY`          | `P_BASE_URL`          |

(`P` is the provider name upper-cased with `-` turned into `_`.) `demo` is the offline demo
model of `regina.runtime.models.demo`; it is never inferred, only chosen explicitly.

The base URL comes from the environment variable when set, else from
`settings.providers[<provider>].baseUrl`, else it is None (LiteLLM's default endpoint).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

from regina.config import Settings, environment
from regina.errors import DefinitionError

DEMO_PROVIDER = "demo"
"""Name of the offline demo provider (explicit only, never inferred)."""
DEMO_LITELLM_PROVIDER = "regina-demo"
"""Name under which `regina.runtime.models.demo` registers its LiteLLM custom provider."""


@dataclass(frozen=True)
class _ProviderInfo:
    litellm_prefix: str
    env_prefix: str | None  # None: no key or base URL from the environment


_KNOWN: dict[str, _ProviderInfo] = {
    "anthropic": _ProviderInfo("anthropic", "ANTHROPIC"),
    "openai": _ProviderInfo("openai", "OPENAI"),
    "vercel-gateway": _ProviderInfo("vercel_ai_gateway", "AI_GATEWAY"),
    DEMO_PROVIDER: _ProviderInfo(DEMO_LITELLM_PROVIDER, None),
}

KNOWN_PROVIDERS: tuple[str, ...] = tuple(_KNOWN)
"""Providers Regina knows by name; any other LiteLLM provider name is passed through."""

_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class ModelTarget:
    """Everything `litellm.completion` needs to reach one model."""

    provider: str
    """Regina provider name (`anthropic`, `openai`, `vercel-gateway`, `demo`, or a LiteLLM name)."""
    litellm_model: str
    """The `model` argument for LiteLLM, provider-prefixed (`anthropic/claude-sonnet-4-5`)."""
    api_key: str | None
    """API key from the provider's `*_API_KEY` environment variable; None when unset."""
    api_base: str | None
    """Base URL override; None means LiteLLM's default endpoint for the provider."""


def infer_provider(model: str) -> str:
    """Return the provider for `model` by the rules in this module's docstring.

    Raises:
        DefinitionError: the model is empty or matches no rule; the message says how to fix it.
    """
    name = model.strip().lower()
    if not name:
        raise DefinitionError("model is empty: set `model:` in the definition or defaults.model in the config")
    if "/" in name:
        return "vercel-gateway"
    if name.startswith(("claude", "anthropic")):
        return "anthropic"
    if name.startswith(("gpt", "o1", "o3", "o4")):
        return "openai"
    raise DefinitionError(
        f"cannot infer the provider of model {model!r}: set `provider:` in the definition "
        f"(anthropic, openai, vercel-gateway, demo, or any LiteLLM provider such as ollama), "
        f"or set defaults.provider in the config"
    )


def check_provider_name(provider: str) -> str:
    """Return `provider` normalised (stripped, lower case), or raise DefinitionError if malformed."""
    name = provider.strip().lower()
    if not _PROVIDER_NAME.match(name):
        raise DefinitionError(
            f"provider {provider!r} is not a valid provider name "
            f"(use one of {', '.join(KNOWN_PROVIDERS)} or a LiteLLM provider name)"
        )
    return name


def import_litellm() -> ModuleType:
    """LiteLLM, imported with Regina's defaults for what it reads from the environment (each
    unless set): its bundled model cost map rather than a download at import (on a machine
    without internet that is seconds of retries and two warnings in every process that imports
    it, even the web's and the CLI's for a definition's provider), errors-only logging, and its
    own httpx handler for the OpenAI route instead of the OpenAI SDK, whose request transform
    costs ~0.18 ms of CPU per history message (23 ms at 100 messages, 4.4 ms with this handler;
    docs/benchmarks.md; "false" uses the SDK). Imported lazily: it costs seconds."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ.setdefault("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "true")
    import litellm

    return litellm


def _litellm_providers() -> set[str]:
    return {str(getattr(p, "value", p)) for p in import_litellm().provider_list}


def _env_prefix(provider: str) -> str:
    return provider.upper().replace("-", "_")


def resolve_model_target(
    model: str,
    provider: str | None,
    settings: Settings,
    environ: Mapping[str, str] | None = None,
) -> ModelTarget:
    """Resolve `model` (and the definition's `provider`, or None to infer it) to a ModelTarget.

    A model that already carries the provider's LiteLLM prefix (`anthropic/claude-…` with
    provider `anthropic`) is not prefixed twice. An explicit provider that Regina does not know by
    name must be one of LiteLLM's providers; it is passed through as `<provider>/<model>` with its
    key from `<PROVIDER>_API_KEY` and base URL from `<PROVIDER>_BASE_URL`. Pure data: resolving
    registers nothing (the model layer registers the demo model when it configures LiteLLM).

    Raises:
        DefinitionError: the provider cannot be inferred, or is unknown to LiteLLM.
    """
    name = check_provider_name(provider) if provider else infer_provider(model)
    info = _KNOWN.get(name)
    if info is None:
        supported = _litellm_providers()
        litellm_name = name if name in supported else name.replace("-", "_")
        if litellm_name not in supported:
            raise DefinitionError(
                f"unknown provider {name!r}: use one of {', '.join(KNOWN_PROVIDERS)} or a provider LiteLLM supports"
            )
        info = _ProviderInfo(litellm_name, _env_prefix(name))
    model_id = model.strip()
    prefix = f"{info.litellm_prefix}/"
    litellm_model = model_id if model_id.startswith(prefix) else prefix + model_id

    api_key: str | None = None
    api_base: str | None = None
    if environ is None:
        environ = environment()
    if info.env_prefix is not None:
        api_key = environ.get(f"{info.env_prefix}_API_KEY") or None
        api_base = environ.get(f"{info.env_prefix}_BASE_URL") or None
    if api_base is None:
        configured = settings.providers.get(name)
        if configured is not None and configured.base_url:
            api_base = configured.base_url
    return ModelTarget(provider=name, litellm_model=litellm_model, api_key=api_key, api_base=api_base)


def missing_api_key(model: str, provider: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Name of the API key variable a definition's provider needs and this process lacks, or None.

    Only the providers Regina knows by name are checked (any other LiteLLM provider, such as a
    local ollama, may need no key). A model that cannot be resolved is reported elsewhere.
    """
    try:
        name = check_provider_name(provider) if provider else infer_provider(model)
    except DefinitionError:
        return None
    info = _KNOWN.get(name)
    if info is None or info.env_prefix is None:
        return None
    variable = f"{info.env_prefix}_API_KEY"
    return None if (environment() if environ is None else environ).get(variable) else variable

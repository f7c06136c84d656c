"""Provider inference and how a model is reached through LiteLLM."""

from __future__ import annotations

import pytest

from regina.config import Settings
from regina.errors import DefinitionError
from regina.providers import ModelTarget, infer_provider, resolve_model_target


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("claude-sonnet-4-5", "anthropic"),
        ("claude-3-5-haiku-latest", "anthropic"),
        ("Claude-Opus-4", "anthropic"),
        ("anthropic.claude-v2", "anthropic"),
        ("gpt-4o", "openai"),
        ("gpt-4.1-mini", "openai"),
        ("o1-mini", "openai"),
        ("o3", "openai"),
        ("o4-mini", "openai"),
        # A "/" wins over the anthropic prefix: the seed names this id as a Vercel AI Gateway model.
        ("anthropic/claude-sonnet-4-5", "vercel-gateway"),
        ("openai/gpt-4o", "vercel-gateway"),
        ("meta/llama-3.3-70b", "vercel-gateway"),
    ],
)
def test_inference_table(model: str, provider: str) -> None:
    assert infer_provider(model) == provider


@pytest.mark.parametrize("model", ["llama3", "mistral-large", "o2-something", "demo"])
def test_inference_failure_says_how_to_fix(model: str) -> None:
    with pytest.raises(DefinitionError) as info:
        infer_provider(model)
    message = str(info.value)
    assert repr(model) in message
    assert "provider:" in message and "defaults.provider" in message


def test_empty_model() -> None:
    with pytest.raises(DefinitionError, match="model is empty"):
        infer_provider("  ")


SETTINGS = Settings()


def test_anthropic_target_with_key_and_default_base() -> None:
    target = resolve_model_target("claude-sonnet-4-5", None, SETTINGS, {"ANTHROPIC_API_KEY": "ak"})
    assert target == ModelTarget(
        provider="anthropic", litellm_model="anthropic/claude-sonnet-4-5", api_key="ak", api_base=None
    )


def test_openai_target_without_key() -> None:
    target = resolve_model_target("gpt-4o", None, SETTINGS, {})
    assert target == ModelTarget(provider="openai", litellm_model="openai/gpt-4o", api_key=None, api_base=None)


def test_vercel_gateway_target() -> None:
    env = {"AI_GATEWAY_API_KEY": "gk", "AI_GATEWAY_BASE_URL": "http://127.0.0.1:9/v1"}
    target = resolve_model_target("anthropic/claude-sonnet-4-5", None, SETTINGS, env)
    assert target.provider == "vercel-gateway"
    assert target.litellm_model == "vercel_ai_gateway/anthropic/claude-sonnet-4-5"
    assert (target.api_key, target.api_base) == ("gk", "http://127.0.0.1:9/v1")


def test_keys_do_not_leak_across_providers() -> None:
    env = {"OPENAI_API_KEY": "ok", "ANTHROPIC_API_KEY": "ak", "AI_GATEWAY_API_KEY": "gk"}
    assert resolve_model_target("gpt-4o", None, SETTINGS, env).api_key == "ok"
    assert resolve_model_target("claude-x", None, SETTINGS, env).api_key == "ak"
    assert resolve_model_target("a/b", None, SETTINGS, env).api_key == "gk"


def test_base_url_env_wins_over_settings_which_wins_over_default() -> None:
    settings = Settings.model_validate({"providers": {"openai": {"baseUrl": "http://config:1/v1"}}})
    from_config = resolve_model_target("gpt-4o", None, settings, {})
    assert from_config.api_base == "http://config:1/v1"
    from_env = resolve_model_target("gpt-4o", None, settings, {"OPENAI_BASE_URL": "http://env:2/v1"})
    assert from_env.api_base == "http://env:2/v1"
    # Settings for another provider do not apply.
    assert resolve_model_target("claude-x", None, settings, {}).api_base is None
    # An empty variable counts as unset.
    assert resolve_model_target("gpt-4o", None, settings, {"OPENAI_BASE_URL": ""}).api_base == "http://config:1/v1"


def test_explicit_provider_overrides_inference_and_is_not_prefixed_twice() -> None:
    target = resolve_model_target("anthropic/claude-sonnet-4-5", "anthropic", SETTINGS, {})
    assert (target.provider, target.litellm_model) == ("anthropic", "anthropic/claude-sonnet-4-5")
    target = resolve_model_target("my-finetune", "OpenAI", SETTINGS, {"OPENAI_API_KEY": "ok"})
    assert (target.provider, target.litellm_model, target.api_key) == ("openai", "openai/my-finetune", "ok")


def test_demo_provider_is_explicit_only_and_needs_no_key() -> None:
    env = {"ANTHROPIC_API_KEY": "ak", "DEMO_API_KEY": "x", "DEMO_BASE_URL": "http://x"}
    target = resolve_model_target("demo", "demo", SETTINGS, env)
    assert target == ModelTarget(provider="demo", litellm_model="regina-demo/demo", api_key=None, api_base=None)


def test_other_litellm_provider_passes_through_with_its_env() -> None:
    env = {"OLLAMA_API_KEY": "olk", "OLLAMA_BASE_URL": "http://127.0.0.1:11434"}
    target = resolve_model_target("llama3", "ollama", SETTINGS, env)
    assert target == ModelTarget(
        provider="ollama", litellm_model="ollama/llama3", api_key="olk", api_base="http://127.0.0.1:11434"
    )
    settings = Settings.model_validate({"providers": {"groq": {"baseUrl": "http://groq.local"}}})
    target = resolve_model_target("llama-3.1-8b", "groq", settings, {})
    assert (target.litellm_model, target.api_key, target.api_base) == (
        "groq/llama-3.1-8b",
        None,
        "http://groq.local",
    )


@pytest.mark.parametrize("provider", ["antropic", "not-a-provider"])
def test_unknown_explicit_provider(provider: str) -> None:
    with pytest.raises(DefinitionError, match=f"unknown provider '{provider}'"):
        resolve_model_target("x", provider, SETTINGS, {})


def test_malformed_provider_name() -> None:
    with pytest.raises(DefinitionError, match="not a valid provider name"):
        resolve_model_target("x", "open ai/", SETTINGS, {})


def test_target_is_frozen() -> None:
    target = resolve_model_target("gpt-4o", None, SETTINGS, {})
    with pytest.raises(AttributeError):
        target.api_key = "changed"  # type: ignore[misc]


def test_a_litellm_only_provider_does_not_make_litellm_download_its_cost_map() -> None:
    """Resolving a provider only LiteLLM knows imports LiteLLM in the web and the CLI too, where
    no model call configured it first: it must use its bundled cost map, not fetch one (offline,
    seconds of retries and warnings in every such process)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    code = (
        "from regina.config import Settings\n"
        "from regina.providers import resolve_model_target\n"
        "print(resolve_model_target('llama3', 'groq', Settings(), {}).litellm_model)\n"
        "from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info\n"
        "print(get_model_cost_map_source_info()['url'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["groq/llama3", "None"], done.stderr  # no URL: none was tried

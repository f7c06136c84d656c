"""Model calls: the one package that knows LiteLLM's shapes.

Modules, one job each:

- `parts`          the tagged deltas every call yields (TextPart, ToolCallPart, FinishPart);
- `calls`          `stream_completion` / `call_completion` / `complete`, choosing the route,
                   and `output_cap` (a token budget's max_tokens);
- `direct`         OpenAI- and Anthropic-format providers through LiteLLM's provider transforms,
                   without `litellm.completion`'s per-call wrapper;
- `litellm_route`  every other provider through `litellm.completion`;
- `stream`         accumulating streamed chunks (text, tool-call fragments, usage);
- `errors`         provider failures as one readable `ModelError`;
- `setup`          importing and configuring LiteLLM once (and registering the demo model);
- `demo`           the offline demo model, a LiteLLM custom provider.

Importing this package does not import LiteLLM; the first call (or `get_litellm()`) does.
"""

from regina.runtime.models.calls import (
    call_completion,
    complete,
    keeps_encoded_messages,
    output_cap,
    stream_completion,
)
from regina.runtime.models.parts import FinishPart, ModelDelta, TextPart, ToolCallPart
from regina.runtime.models.setup import get_litellm

__all__ = [
    "TextPart",
    "ToolCallPart",
    "FinishPart",
    "ModelDelta",
    "stream_completion",
    "call_completion",
    "complete",
    "keeps_encoded_messages",
    "output_cap",
    "get_litellm",
]

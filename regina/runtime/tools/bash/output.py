"""What the model sees of a command's output: JSON-safe text, cut to the tool-output limit
keeping the start and the end of each stream."""

from __future__ import annotations

import re

__all__ = ["ENC_ERRORS", "clean", "truncate_output"]

ENC_ERRORS = "surrogateescape"
"""Binary bytes survive a read -> string -> write round trip through just-bash."""


#: Surrogates that are not surrogate-escaped bytes (U+DC80-DCFF): `printf '\ud800'` makes one.
_LONE_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def clean(text: str) -> str:
    """Turn surrogate-escaped bytes back into replacement characters (JSON-safe text); any other
    surrogate becomes U+FFFD too."""
    try:
        return text.encode("utf-8", ENC_ERRORS).decode("utf-8", "replace")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8", ENC_ERRORS).decode("utf-8", "replace")


def _cut(text: str, budget: int, label: str) -> str:
    if len(text) <= budget:
        return text
    dropped = len(text) - budget
    head = budget * 2 // 3
    tail = budget - head
    note = f"\n[... {dropped} characters of {label} truncated (limit {budget}) ...]\n"
    return text[:head] + note + (text[-tail:] if tail else "")


def truncate_output(stdout: str, stderr: str, limit: int) -> tuple[str, str]:
    """Fit stdout + stderr into `limit` characters, keeping the start and end of each."""
    if len(stdout) + len(stderr) <= limit:
        return stdout, stderr
    err_budget = min(len(stderr), max(limit // 4, limit - len(stdout)))
    out_budget = limit - err_budget
    return _cut(stdout, out_budget, "stdout"), _cut(stderr, err_budget, "stderr")

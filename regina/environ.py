"""The process environment, read in one place.

Its own module, free of imports, so that the terminal client reads `REGINA_URL` without loading
the settings models (regina/config.py re-exports it for the server side)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def environment() -> Mapping[str, str]:
    """The process environment: the one place Regina's code reads it (secrets such as provider
    API keys, `${VAR}` in definitions and the bash allow-list come from here too)."""
    return os.environ

"""Reading JSON request bodies with errors that say what was wrong."""

from __future__ import annotations

from typing import Any

from flask import request

from regina.errors import BadRequest


def json_body(required: bool = True) -> Any:
    """The parsed JSON body; 400 when it is not JSON (413 comes from MAX_CONTENT_LENGTH)."""
    raw = request.get_data(cache=True)
    if not raw:
        if required:
            raise BadRequest('request body must be JSON, e.g. {"message": "hello"}')
        return {}
    data = request.get_json(silent=True, force=True)
    if data is None:
        raise BadRequest("request body is not valid JSON")
    return data

"""Core errors carry no HTTP status; api/errors.py maps them, nearest class first."""

from __future__ import annotations

import pytest

from api.errors import status_of
from regina import errors


def _tree(cls: type[errors.ReginaError]) -> list[type[errors.ReginaError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _tree(child))]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.BadRequest, 400),
        (errors.NotFound, 404),
        (errors.Conflict, 409),
        (errors.StaleEpoch, 409),
        (errors.Gone, 410),
        (errors.PayloadTooLarge, 413),
        (errors.Unavailable, 503),
        (errors.VFSError, 400),
        (errors.NoSuchPath, 400),
        (errors.ConfigError, 500),
        (errors.ModelError, 500),
        (errors.StorageError, 503),
    ],
)
def test_each_core_error_has_its_status(error: type[errors.ReginaError], status: int) -> None:
    assert status_of(error("x")) == status


def test_no_core_error_knows_http() -> None:
    offenders = [cls.__name__ for cls in _tree(errors.ReginaError) if "status_code" in vars(cls)]
    assert offenders == [], "map HTTP statuses in api/errors.py:STATUS, not on the core's errors"

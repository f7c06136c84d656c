"""WSGI entry point for gunicorn: `gunicorn -k gevent api.wsgi:app`."""

from __future__ import annotations

import logging
import os

from api import create_app

logging.basicConfig(
    level=os.environ.get("REGINA_LOG_LEVEL", "INFO").upper(),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

app = create_app()

"""WSGI entry point for gunicorn: `gunicorn -k gevent api.wsgi:app`."""

from __future__ import annotations

import gc
import logging
import os

from api import create_app

logging.basicConfig(
    level=os.environ.get("REGINA_LOG_LEVEL", "INFO").upper(),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

app = create_app()
# Long-lived objects from start-up stay out of the cyclic GC's full collections (shorter pauses).
gc.collect()
gc.freeze()

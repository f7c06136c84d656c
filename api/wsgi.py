"""WSGI entry point for gunicorn: `gunicorn -k gevent api.wsgi:app`."""

from __future__ import annotations

import gc
import logging

from api import create_app
from regina.config import process_settings

settings = process_settings()
logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app(settings)
# Long-lived objects from start-up stay out of the cyclic GC's full collections (shorter pauses).
gc.collect()
gc.freeze()

"""WSGI entry point for gunicorn: `gunicorn -k gevent api.wsgi:app`."""

from __future__ import annotations

import gc

from api import create_app
from regina.config import process_settings
from regina.logs import configure

settings = process_settings()
configure("web", settings.log_level, settings.log_format)

app = create_app(settings)
# Long-lived objects from start-up stay out of the cyclic GC's full collections (shorter pauses).
gc.collect()
gc.freeze()

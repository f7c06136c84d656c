"""Celery settings for Regina's workers and for the web processes that publish to them.

Each value carries the measured reason from ../shared/FINDINGS-celery.md (kept in
docs/architecture.md): per-instance queues on Redis with the gevent pool.
"""

from regina import keys
from regina.config import process_settings
from workers.broker_url import is_socket_url, kombu_broker_url

_settings = process_settings()

broker_url = _settings.broker_url
if _settings.broker:
    # RabbitMQ (workers/amqp.py): push consumers per instance queue; publishes wait for the
    # broker's confirm, so a step the web was told is queued is on the broker.
    broker_transport = "workers.amqp:Transport"
    broker_transport_options = {"confirm_publish": True}
else:
    # kombu's Redis transport with one publishing client per channel (workers/transport.py);
    # other schemes (rediss://, sentinel://) keep kombu's own choice.
    # A Unix socket URL (`unix://`) becomes this transport's `regina+socket://`.
    broker_url = kombu_broker_url(broker_url)
    if broker_url.startswith("redis://") or is_socket_url(broker_url):
        broker_transport = "workers.transport:Transport"
    # One BRPOP key per queue instead of four: we use no message priorities (4-5x cheaper per
    # message with many queues). visibility_timeout stays long: gevent workers never sweep, and
    # a short one re-runs live steps; dead workers' steps are restored by the coordinator instead.
    broker_transport_options = {"priority_steps": [0], "visibility_timeout": 3600}
broker_connection_retry_on_startup = True
# A pool at least as large as the number of concurrent publishers; never None (3.5 ms/publish).
broker_pool_limit = 64

task_serializer = "json"
accept_content = ["json"]
# No result backend: results travel as run events in Redis Streams.
task_ignore_result = True
result_backend = None
# Acknowledge after the step ran, one message at a time per greenlet slot.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Queues are created by name when a worker attaches an instance.
task_create_missing_queues = True
task_default_queue = keys.DEFAULT_QUEUE
worker_hijack_root_logger = False
worker_redirect_stdouts = False
# Task events let Flower show the per-instance queues' tasks (REGINA_TASK_EVENTS=false to save
# a few publishes per step).
worker_send_task_events = _settings.task_events
task_send_sent_event = False
worker_cancel_long_running_tasks_on_connection_loss = False

"""The Celery app. Messages carry ids only; the database is the truth (see docs/architecture.md)."""

import os

from celery import Celery, signals

from dataflare_portal.core.requestctx import request_id_var

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")

app = Celery("dataflare_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def tune_embedded_transport() -> None:
    """Poll the serverless SQLite transport often: its default of 1 s would dominate batch latency.

    kombu passes the SQLAlchemy transport's options to create_engine, so the polling interval is
    set on the transport class instead.
    """
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("sqla+"):
        from kombu.transport import sqlalchemy

        sqlalchemy.Transport.polling_interval = settings.CELERY_BROKER_POLLING_INTERVAL
        install_embedded_channel()


def install_embedded_channel() -> None:
    """Let several processes create the embedded broker's tables and queues at once.

    kombu's SQLAlchemy channel guards table creation and queue get-or-create with an in-process mutex
    only: two workers started together on an empty broker file both found no `stages` queue, both
    inserted it, and the second died with `UNIQUE constraint failed: kombu_queue.name` (or "table
    kombu_queue already exists"). The loser of either race now reads what the winner created.
    """
    from kombu.transport import sqlalchemy
    from sqlalchemy.exc import IntegrityError, OperationalError

    base = sqlalchemy.Transport.Channel
    if getattr(base, "df_concurrent_create", False):
        return

    class EmbeddedChannel(base):
        df_concurrent_create = True

        def _open(self):
            for attempt in range(5):
                try:
                    return super()._open()
                except OperationalError as exc:
                    # Another process created the tables between create_all's check and its CREATE.
                    if "already exists" not in str(exc) or attempt == 4:
                        raise

        def _get_or_create(self, queue):
            try:
                return super()._get_or_create(queue)
            except IntegrityError:
                # Another process inserted the queue between our lookup and our insert: use its row.
                self.session.rollback()
                return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).one()

    sqlalchemy.Transport.Channel = EmbeddedChannel
    sqlalchemy.Transport.drain_events = _drain_events_until_stop


def _drain_events_until_stop(self, connection, timeout=None):
    """kombu's polling drain_events, which also returns as soon as the worker was asked to stop.

    Celery's consumer loop for a polling transport drains with a 2 s timeout and checks for a stop request
    only between drains: a clean stop of an idle worker on the embedded broker waited up to 2 s for nothing.
    """
    from queue import Empty
    from time import monotonic, sleep

    from celery.worker import state

    time_start = monotonic()
    polling_interval = self.polling_interval
    if timeout and polling_interval and polling_interval > timeout:
        polling_interval = timeout
    while True:
        try:
            self.cycle.get(self._deliver, timeout=timeout)
        except Empty:
            # Set to the exit code (0 for a clean stop) by the worker's signal handler; None or False: run on.
            flags = (state.should_stop, state.should_terminate)
            stopping = any(flag is not None and flag is not False for flag in flags)
            if stopping or (timeout is not None and monotonic() - time_start >= timeout):
                raise TimeoutError() from None  # socket.timeout, as kombu raises
            if polling_interval is not None:
                sleep(polling_interval)
        else:
            break


# Celery's Django fixup closes every database connection before and after each task unless
# CELERY_DB_REUSE_MAX is set, so each batch opened a new PostgreSQL connection (about 5 ms of a
# 30 ms batch in bench/engine_bench.py). Connections are kept instead, and checked the way Django
# checks them between requests: closed when broken, in an error state or older than CONN_MAX_AGE,
# with CONN_HEALTH_CHECKS pinging a reused one before the task's first query. The fixup still
# recycles them every 2 x DB_REUSE_MAX tasks.
app.add_defaults({"CELERY_DB_REUSE_MAX": 500})


@signals.task_prerun.connect
def _check_db_connections(sender=None, **kwargs) -> None:
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return  # an eager task runs inside the caller's transaction: leave its connection alone
    from django.db import close_old_connections

    close_old_connections()


# The request id travels with every message: a run started from the admin or the API keeps the id
# of that request in its worker logs and in the audit entries the workers write (publish, ...),
# and messages a task sends carry it on. Beat's own tasks have none.
REQUEST_ID_HEADER = "df_request_id"
_request_tokens: dict[str, object] = {}


@signals.before_task_publish.connect
def _attach_request_id(headers=None, **kwargs) -> None:
    rid = request_id_var.get()
    if rid and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, rid)


@signals.task_prerun.connect
def _adopt_request_id(task_id=None, task=None, **kwargs) -> None:
    if task is None or getattr(task.request, "is_eager", False):
        return  # an eager task already runs in the caller's context
    _request_tokens[task_id] = request_id_var.set(getattr(task.request, REQUEST_ID_HEADER, None) or "")


@signals.task_postrun.connect
def _drop_request_id(task_id=None, **kwargs) -> None:
    token = _request_tokens.pop(task_id, None)
    if token is not None:
        request_id_var.reset(token)


@signals.worker_shutdown.connect
def _skip_final_collections(sender=None, **kwargs) -> None:
    """At a clean stop (sent after the pool and the consumer stopped) nothing is left but to exit.

    Move every object out of the collector's reach so the interpreter's final collections do not walk the
    whole Django heap: that took about 2 s of every clean stop on a busy machine (gc.freeze, Python >= 3.7).
    """
    import gc

    gc.freeze()

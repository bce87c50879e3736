"""Entry point of test workers: registers the test-only stage kinds, then runs `celery worker`."""

import sys

import django


def install_fault(spec: str, folder: str) -> None:
    """DF_TEST_FAULT="<point>:<stop|hang>": at that publish or partition-phase fault point this worker stops
    itself (SIGSTOP, every thread, until the test sends SIGCONT) or hangs (its lease kept alive until the test
    kills it).
    Every point reached leaves a marker file `<point>.<pid>` in DF_TEST_FAULT_DIR so the test knows where it is.
    """
    import os
    import signal
    import time
    from pathlib import Path

    from tasks import partition, publish

    point, action = spec.split(":")
    done: set[str] = set()

    def fault(name: str) -> None:
        Path(folder, f"{name}.{os.getpid()}").touch()
        if name != point or name in done:
            return
        done.add(name)
        Path(folder, f"{name}.{action}").touch()
        if action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
            Path(folder, f"{name}.resumed").touch()
        else:
            while True:
                time.sleep(1)

    publish.fault_point = fault
    partition.fault_point = fault


if __name__ == "__main__":
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
    django.setup()
    from dataflare_portal.celery import app, tune_embedded_transport
    from tasks.tests import kinds_for_tests

    kinds_for_tests.register()
    if os.environ.get("DF_TEST_DUPLICATE_DELIVERY"):
        # Every message this worker sends goes out twice: duplicate delivery must change nothing.
        from tasks import engine

        single = engine.dispatch
        engine.dispatch = lambda items: single([*items, *items])
    if os.environ.get("DF_TEST_FAULT"):
        install_fault(os.environ["DF_TEST_FAULT"], os.environ["DF_TEST_FAULT_DIR"])
    if os.environ.get("DF_TEST_DELIVERY_LOG"):
        # Record what the worker really received and what each delivery did, so a test can show that
        # duplicates arrived and were skipped (O_APPEND lines are atomic across the prefork children).
        from celery import signals

        log_path = os.environ["DF_TEST_DELIVERY_LOG"]

        def _note(line: str) -> None:
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

        @signals.task_received.connect(weak=False)
        def _received(request=None, **_kw):
            if request is not None and request.name == "tasks.batch_execute":
                _note(f"received {request.id}")

        @signals.task_postrun.connect(weak=False)
        def _done(task_id=None, task=None, retval=None, **_kw):
            if task is not None and task.name == "tasks.batch_execute":
                _note(f"result {task_id} {retval}")

    tune_embedded_transport()
    app.worker_main(sys.argv[1:])

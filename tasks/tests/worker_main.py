"""Entry point of test workers: registers the test-only stage kinds, then runs `celery worker`."""

import sys

import django

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
    tune_embedded_transport()
    app.worker_main(sys.argv[1:])

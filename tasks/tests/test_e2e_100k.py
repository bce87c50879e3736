"""Issue 3's acceptance run: 100,000 records end to end from the admin, the API and the command.

A real Celery worker (prefork, two processes) executes; on PostgreSQL + Redis when DATABASE_URL and
REDIS_URL are set, else on the embedded default. The published version must equal the records a
plain Python pass over the same stages produces, exactly and in order.
"""

import pytest
from django.core.management import call_command

from tasks.choices import RunStatus
from tasks.models import TaskRun
from tasks.tests.conftest import run_wait
from tasks.tests.factories import checksum, make_pipeline, make_records, published, reference_output

pytestmark = [pytest.mark.integration]

N = 100_000


def _start_from_api(client, pipeline) -> TaskRun:
    response = client.post("/api/v1/tasks/runs/", {"pipeline": pipeline.pk}, content_type="application/json")
    assert response.status_code == 201, response.content
    return TaskRun.objects.get(pk=response.json()["id"])


def _start_from_admin(client, pipeline) -> TaskRun:
    response = client.post(
        "/pipelines/pipeline/", {"action": "run_pipeline_action", "_selected_action": [pipeline.pk]}, follow=True
    )
    assert response.status_code == 200
    return TaskRun.objects.get(pipeline=pipeline)


def _start_from_command(client, pipeline) -> TaskRun:
    # --wait returns when the run is final and exits non-zero (SystemExit) unless it succeeded.
    call_command("run_pipeline", str(pipeline.pk), "--wait", "--timeout", "900", "--interval", "0.5")
    return TaskRun.objects.get(pipeline=pipeline)


@pytest.mark.parametrize("interface", ["api", "admin", "command"])
def test_a_100k_record_pipeline_publishes_exactly_the_expected_records(workers, file_root, client, interface):
    records = make_records(N, seed=100)
    pipeline = make_pipeline(file_root, records=records, batch_size=5000, name=f"e2e-{interface}")
    w = workers.start(name=f"e2e-{interface}", pool="prefork", concurrency=2)
    workers.wait_ready(w)
    start = {"api": _start_from_api, "admin": _start_from_admin, "command": _start_from_command}[interface]
    run = run_wait(start(client, pipeline), timeout=900)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    assert run.records_in == N
    out = published(run)
    expected = reference_output(records)
    assert len(out) == len(expected)
    assert checksum(out) == checksum(expected)

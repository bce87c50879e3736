"""The engine tests' pipeline reading its input over HTTP (a real server on loopback) publishes what the file
pipeline publishes; the download lands in the run's workspace folder once and every batch reads it there."""

import json

import pytest

from catalog import services as catalog_services
from catalog.models import Dataset, Project
from catalog.tests.httpserver import start_server, stop_server
from pipelines.models import Pipeline, PipelineStage
from tasks import engine, workspace
from tasks.choices import RunStatus
from tasks.services import run_start
from tasks.tests import kinds_for_tests
from tasks.tests.factories import STANDARD_STAGES, make_pipeline, make_records, published, reference_output

pytestmark = pytest.mark.django_db

kinds_for_tests.register()


@pytest.fixture
def server():
    srv = start_server()
    yield srv
    stop_server(srv)


@pytest.mark.parametrize("planned", [True, False], ids=["planned-reads", "chained-reads"])
def test_an_http_source_feeds_the_same_output_as_the_file_source(doorbell, file_root, server, monkeypatch, planned):
    monkeypatch.setattr(engine, "PLANNED_READS_ENABLED", planned)
    records = make_records(1050, seed=16)
    server.put("in.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())

    files = make_pipeline(file_root, records=records, batch_size=100, name="files")
    run = run_start(pipeline=files, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    from_files = published(run)

    project = Project.objects.get(name="Engine tests")
    web = catalog_services.datasource_create(
        actor=None, project=project, name="web", kind="http", config={"base_url": server.url("files/")}
    )
    inp = Dataset.objects.create(project=project, source=web, name="web-in", format="jsonl", location="in.jsonl")
    out = Dataset.objects.create(
        project=project, source=files.output_dataset.source, name="web-out", format="jsonl", location="out/web.jsonl"
    )
    pipeline = Pipeline.objects.create(
        project=project, name="web", input_dataset=inp, output_dataset=out, batch_size=100
    )
    PipelineStage.objects.create(pipeline=pipeline, key="read", kind="read", position=0, config={})
    for pos, (key, kind, config) in enumerate(STANDARD_STAGES, start=1):
        PipelineStage.objects.create(pipeline=pipeline, key=key, kind=kind, position=pos, config=config)
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert run.records_in == 1050
    assert published(run) == from_files == reference_output(records)
    # One GET for the whole run (11 read batches): the snapshot in the run's folder served the rest.
    assert [e[0] for e in server.requests_for("in.jsonl")] == ["GET"]
    assert list((workspace.run_dir(run.pk) / "downloads").glob("*.jsonl"))


@pytest.mark.integration
def test_real_workers_read_an_http_source_like_a_file_source(workers, file_root, server):
    """Two prefork workers (separate processes) read the run's one download from the shared workspace."""
    from tasks.tests.conftest import run_wait

    records = make_records(10_000, seed=16)
    server.put("in.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    w = workers.start(name="http", pool="prefork", concurrency=2)
    workers.wait_ready(w)
    files = make_pipeline(file_root, records=records, batch_size=1000, name="files")
    run = run_wait(run_start(pipeline=files, actor=None), timeout=300)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    from_files = published(run)
    project = Project.objects.get(name="Engine tests")
    web = catalog_services.datasource_create(
        actor=None, project=project, name="web", kind="http", config={"base_url": server.url("files/")}
    )
    inp = Dataset.objects.create(project=project, source=web, name="web-in", format="jsonl", location="in.jsonl")
    out = Dataset.objects.create(
        project=project, source=files.output_dataset.source, name="web-out", format="jsonl", location="out/web.jsonl"
    )
    pipeline = Pipeline.objects.create(
        project=project, name="web", input_dataset=inp, output_dataset=out, batch_size=1000
    )
    PipelineStage.objects.create(pipeline=pipeline, key="read", kind="read", position=0, config={})
    for pos, (key, kind, config) in enumerate(STANDARD_STAGES, start=1):
        PipelineStage.objects.create(pipeline=pipeline, key=key, kind=kind, position=pos, config=config)
    run = run_wait(run_start(pipeline=pipeline, actor=None), timeout=300)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    assert run.records_in == 10_000
    assert published(run) == from_files == reference_output(records)
    assert [e[0] for e in server.requests_for("in.jsonl")] == ["GET"]

"""The engine tests' pipeline with its input and output in S3 (moto's server) and in MariaDB, on real workers.

read -> filter -> clean -> dedup -> publish, run three times from one set of records: files to files (as
the engine tests do), S3 to S3, MariaDB to MariaDB. The three published versions must hold the same
records, in the same order, equal to a plain Python pass over the stages. On PostgreSQL + Redis when
DATABASE_URL and REDIS_URL are set, else on the embedded default. A SIGKILL of the publishing worker in
the middle of the multipart upload leaves no object, no open upload and no published row; the retry
publishes once.
"""

from __future__ import annotations

import json

import pytest

from catalog import services as catalog_services
from catalog.choices import DatasetVersionStatus
from catalog.models import Dataset, DatasetVersion, Project
from conftest import S3_TEST_SECRET, wait_until
from pipelines.models import Pipeline, PipelineStage
from tasks.choices import RunStatus
from tasks.services import run_start
from tasks.tests import kinds_for_tests
from tasks.tests.conftest import run_wait
from tasks.tests.factories import (
    STANDARD_STAGES,
    STREAMING_STAGES,
    checksum,
    make_pipeline,
    make_records,
    published,
    reference_output,
)

pytestmark = [pytest.mark.integration]

kinds_for_tests.register()


def _pipeline(project, source, *, name, in_format, in_location, out_format, out_location, stages, batch_size):
    inp = Dataset.objects.create(
        project=project, source=source, name=f"{name}-in", format=in_format, location=in_location
    )
    out = Dataset.objects.create(
        project=project, source=source, name=f"{name}-out", format=out_format, location=out_location
    )
    pipeline = Pipeline.objects.create(
        project=project, name=name, input_dataset=inp, output_dataset=out, batch_size=batch_size
    )
    PipelineStage.objects.create(pipeline=pipeline, key="read", kind="read", position=0, config={})
    for pos, (key, kind, config) in enumerate(stages, start=1):
        PipelineStage.objects.create(pipeline=pipeline, key=key, kind=kind, position=pos, config=config)
    return pipeline


def s3_pipeline(s3_bucket, records, *, name="s3", stages=STANDARD_STAGES, batch_size=1000) -> Pipeline:
    """Input JSONL uploaded to the bucket; versions published to out/<name>.v<N>.jsonl in the same bucket."""
    endpoint, bucket, client = s3_bucket
    project, _ = Project.objects.get_or_create(name="Connector runs", defaults={"slug": "connector-runs"})
    source = catalog_services.datasource_create(
        actor=None,
        project=project,
        name=f"lake-{name}",
        kind="s3",
        config={"endpoint": endpoint, "bucket": bucket, "prefix": "factory"},
        secret=S3_TEST_SECRET,
    )
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    client.put_object(Bucket=bucket, Key=f"factory/in/{name}.jsonl", Body=body)
    return _pipeline(project, source, name=name, in_format="jsonl", in_location=f"in/{name}.jsonl",
                     out_format="jsonl", out_location=f"out/{name}.jsonl", stages=stages,
                     batch_size=batch_size)  # fmt: skip


def mysql_pipeline(mysql_db, records, *, name="maria", stages=STANDARD_STAGES, batch_size=1000) -> Pipeline:
    """Input rows in a MariaDB table (id primary key); versions published to tables out_v<N>."""
    config, execute = mysql_db
    execute("CREATE TABLE src (id BIGINT PRIMARY KEY, text LONGTEXT NOT NULL, lang VARCHAR(8) NOT NULL)")
    rows = [(r["id"], r["text"], r["lang"]) for r in records]
    for i in range(0, len(rows), 2000):
        part = rows[i : i + 2000]
        marks = ", ".join(["(%s, %s, %s)"] * len(part))
        execute(f"INSERT INTO src VALUES {marks}", [v for row in part for v in row])  # noqa: S608
    project, _ = Project.objects.get_or_create(name="Connector runs", defaults={"slug": "connector-runs"})
    source = catalog_services.datasource_create(
        actor=None, project=project, name=f"maria-{name}", kind="mysql", config=config
    )
    return _pipeline(project, source, name=name, in_format="table", in_location="src", out_format="table",
                     out_location="out", stages=stages, batch_size=batch_size)  # fmt: skip


def _run(workers, pipeline, timeout=900):
    run = run_wait(run_start(pipeline=pipeline, actor=None), timeout=timeout)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    return run


def _same_output(n, workers, file_root, s3_bucket, mysql_db, batch_size):
    records = make_records(n, seed=16)
    expected = reference_output(records)
    w = workers.start(name="conn", pool="prefork", concurrency=2)
    workers.wait_ready(w)
    outputs = {}
    runs = {
        "files": make_pipeline(file_root, records=records, batch_size=batch_size, name="files"),
        "s3": s3_pipeline(s3_bucket, records, batch_size=batch_size),
        "mariadb": mysql_pipeline(mysql_db, records, batch_size=batch_size),
    }
    for label, pipeline in runs.items():
        run = _run(workers, pipeline)
        assert run.records_in == n, label
        outputs[label] = published(run)
    assert len(outputs["files"]) == len(expected) and checksum(outputs["files"]) == checksum(expected)
    assert outputs["s3"] == outputs["files"]
    assert outputs["mariadb"] == outputs["files"]
    # The S3 version is one object, published whole; no upload is left open.
    _endpoint, bucket, client = s3_bucket
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="factory/out/").get("Contents", [])]
    assert keys == ["factory/out/s3.v1.jsonl"]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    return outputs


def test_s3_and_mariadb_pipelines_publish_what_the_file_pipeline_publishes(workers, file_root, s3_bucket, mysql_db):
    _same_output(10_000, workers, file_root, s3_bucket, mysql_db, batch_size=1000)


@pytest.mark.parametrize("n", [100_000])
def test_100k_records_through_s3_and_mariadb(workers, file_root, s3_bucket, mysql_db, n):
    _same_output(n, workers, file_root, s3_bucket, mysql_db, batch_size=5000)


# ---- SIGKILL during the multipart upload ------------------------------------------------------
def _fast_recovery():
    from dataflare_portal.core.config import config_set
    from tasks import engine

    for key, value in {
        "engine_lease_seconds": 2,
        "engine_resend_after_seconds": 3,
        "worker_heartbeat_seconds": 0.5,
    }.items():
        config_set(key=key, value=value, actor=None)
    engine.engine_settings_forget()


@pytest.mark.parametrize("point", ["writing", "written", "renamed"])
def test_a_sigkill_during_the_multipart_upload_leaves_nothing_and_the_retry_publishes_once(
    workers, s3_bucket, tmp_path, point
):
    """writing: the upload is open; written: every part is up, not completed; renamed: completed, not committed."""
    _fast_recovery()
    _endpoint, bucket, client = s3_bucket
    records = make_records(3000, unique=True)
    pipeline = s3_pipeline(s3_bucket, records, name="killed", stages=STREAMING_STAGES, batch_size=200)
    faults = tmp_path / "faults"
    faults.mkdir()
    victim = workers.start(
        name="victim", extra_env={"DF_TEST_FAULT": f"{point}:hang", "DF_TEST_FAULT_DIR": str(faults)}
    )
    workers.wait_ready(victim)
    run = run_start(pipeline=pipeline, actor=None)
    wait_until(lambda: (faults / f"{point}.hang").exists(), 180)
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="factory/out/").get("Contents", [])]
    if point == "renamed":
        assert objects == ["factory/out/killed.v1.jsonl"] and not uploads  # completed; the row still BUILDING
    else:
        assert [u["Key"] for u in uploads] == ["factory/out/killed.v1.jsonl"] and not objects
    assert not DatasetVersion.objects.filter(status=DatasetVersionStatus.PUBLISHED).exists()
    workers.kill(victim)
    rescuer = workers.start(name="rescuer")
    workers.wait_ready(rescuer)
    run = run_wait(run, timeout=300)
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, workers.log_tail())
    versions = list(DatasetVersion.objects.filter(dataset=pipeline.output_dataset))
    assert [(v.version, v.status) for v in versions] == [(1, DatasetVersionStatus.PUBLISHED)]
    assert run.output_version_id == versions[0].pk
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="factory/out/").get("Contents", [])]
    assert objects == ["factory/out/killed.v1.jsonl"]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    out = published(run)
    expected = reference_output(records, STREAMING_STAGES)
    assert checksum(out) == checksum(expected) and versions[0].record_count == len(expected)

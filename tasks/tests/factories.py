"""Test data for the engine: a project, a file source with a JSONL input, and pipelines built from stage kinds."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from catalog.models import Dataset, DataSource, Project
from pipelines.models import Pipeline, PipelineStage

# read -> filter -> clean -> dedup -> publish: the end-to-end pipeline of the engine tests.
STANDARD_STAGES = [
    ("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}),
    ("clean", "clean", {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}]}),
    ("dedup", "dedup", {"fields": ["text"]}),
    ("publish", "publish", {}),
]
STREAMING_STAGES = [
    ("clean", "clean", {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}]}),
    ("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}),
    ("publish", "publish", {}),
]

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
]


def make_records(n: int, *, seed: int = 7, unique: bool = False) -> list[dict]:
    """Text records with some short ones (filtered), HTML and extra spaces (cleaned) and repeats (dedup)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if not unique and i % 10 == 3:
            text = rng.choice(WORDS)[:5]  # too short: filtered
        elif not unique and i % 10 == 7 and i > 10:
            text = out[i - 5]["text"]  # a repeat: dedup drops it
        else:
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            text = f"<p>{words}   #{i}</p>" if i % 4 == 0 else f"  {words}  #{i} "
        out.append({"id": i, "text": text, "lang": "en"})
    return out


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def checksum(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def make_pipeline(
    root: Path,
    *,
    records: list[dict],
    stages=STANDARD_STAGES,
    name: str = "engine",
    batch_size: int = 100,
    max_batch_attempts: int = 3,
) -> Pipeline:
    """A pipeline over a JSONL input below `root`, publishing JSONL versions to out/<name>.v<N>.jsonl."""
    project, _ = Project.objects.get_or_create(name="Engine tests", defaults={"slug": "engine-tests"})
    source, _ = DataSource.objects.get_or_create(
        project=project, name="files", defaults={"kind": "file", "config": {"root": str(root)}}
    )
    write_jsonl(root / "in" / f"{name}.jsonl", records)
    inp = Dataset.objects.create(
        project=project, source=source, name=f"{name}-in", format="jsonl", location=f"in/{name}.jsonl"
    )
    out = Dataset.objects.create(
        project=project, source=source, name=f"{name}-out", format="jsonl", location=f"out/{name}.jsonl"
    )
    pipeline = Pipeline.objects.create(
        project=project,
        name=name,
        input_dataset=inp,
        output_dataset=out,
        batch_size=batch_size,
        max_batch_attempts=max_batch_attempts,
    )
    PipelineStage.objects.create(pipeline=pipeline, key="read", kind="read", position=0, config={})
    for pos, (key, kind, config) in enumerate(stages, start=1):
        PipelineStage.objects.create(pipeline=pipeline, key=key, kind=kind, position=pos, config=config)
    return pipeline


def reference_output(records: list[dict], stages=STANDARD_STAGES) -> list[dict]:
    """The same processors in a plain loop: the output a run must equal."""
    from pipelines.stagekinds import StageContext, registry

    data = list(records)
    for key, kind_name, config in stages:
        if kind_name == "publish":
            break
        kind = registry.get(kind_name)
        ctx = StageContext(config=config, stage_key=key)
        if str(kind.group) == "global":
            data = [r for res in kind.run_global(iter([data]), ctx) for r in res.records]
        else:
            data = kind.process(data, ctx).records
    return data


def published(run) -> list[dict]:
    """The records of the dataset version a run published (read back through its connector)."""
    from catalog.connectors import get_connector
    from catalog.models import DatasetVersion

    run.refresh_from_db()
    version = DatasetVersion.objects.select_related("dataset__source").get(pk=run.output_version_id)
    conn = get_connector(version.dataset.source)
    ref = {"location": version.location, "format": version.dataset.format}
    return [r for chunk, _cp in conn.read(ref, batch_size=10_000) for r in chunk]


def published_bytes(run) -> bytes:
    """The bytes of the file a run published (to compare two runs' outputs byte for byte)."""
    from catalog.models import DatasetVersion

    run.refresh_from_db()
    version = DatasetVersion.objects.select_related("dataset__source").get(pk=run.output_version_id)
    return (Path(version.dataset.source.config["root"]) / version.location).read_bytes()


# ---- factory-boy factories, one per model (state switches as Params traits) -----------------
import factory  # noqa: E402
from django.utils import timezone as _tz  # noqa: E402

from pipelines.tests.factories import PipelineFactory as _PipelineFactory  # noqa: E402
from pipelines.tests.factories import QCPolicyFactory as _QCPolicyFactory  # noqa: E402
from tasks.choices import BatchStatus, LotDecision, RunStatus  # noqa: E402
from tasks.models import (  # noqa: E402
    Batch,
    QCLot,
    QuarantinedRecord,
    ReviewItem,
    RunEvent,
    StageRun,
    Task,
    TaskRun,
    WorkerHeartbeat,
)


class TaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Task

    pipeline = factory.SubFactory(_PipelineFactory)
    project = factory.SelfAttribute("pipeline.project")
    name = factory.Sequence(lambda n: f"task-{n}")


class TaskRunFactory(factory.django.DjangoModelFactory):
    """A run; pending unless a trait says otherwise."""

    class Meta:
        model = TaskRun

    task = factory.SubFactory(TaskFactory)
    project = factory.SelfAttribute("task.project")
    pipeline = factory.SelfAttribute("task.pipeline")
    number = factory.Sequence(lambda n: n + 1)

    class Params:
        running = factory.Trait(status=RunStatus.RUNNING, started_at=factory.LazyFunction(_tz.now))
        failed = factory.Trait(
            status=RunStatus.FAILED,
            status_reason="stage clean failed",
            started_at=factory.LazyFunction(_tz.now),
            finished_at=factory.LazyFunction(_tz.now),
        )


class RunEventFactory(factory.django.DjangoModelFactory):
    """A recorded run transition (what tasks/events.py writes with the transition)."""

    class Meta:
        model = RunEvent

    run = factory.SubFactory(TaskRunFactory, running=True)
    project = factory.SelfAttribute("run.project")
    kind = "run.started"
    sequence = factory.Sequence(lambda n: n + 1)
    at = factory.LazyFunction(_tz.now)
    payload = factory.LazyAttribute(lambda o: {"run": str(o.run.pk), "status": "running"})


class StageRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = StageRun

    run = factory.SubFactory(TaskRunFactory)
    position = factory.Sequence(lambda n: n)
    key = factory.Sequence(lambda n: f"stage-{n}")
    kind = "filter"


class BatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Batch

    stage_run = factory.SubFactory(StageRunFactory)
    index = factory.Sequence(lambda n: n)

    class Params:
        leased = factory.Trait(
            status=BatchStatus.RUNNING,
            attempt=1,
            lease_owner="worker-1",
            lease_expires_at=factory.LazyFunction(lambda: _tz.now() + __import__("datetime").timedelta(seconds=60)),
        )


class QuarantinedRecordFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = QuarantinedRecord

    batch = factory.SubFactory(BatchFactory)
    stage_run = factory.SelfAttribute("batch.stage_run")
    attempt = 1
    record_index = factory.Sequence(lambda n: n)
    code = "INVALID_ARGUMENT"
    reason = "record rejected by the model server"
    record = factory.LazyFunction(lambda: {"text": "bad"})


class QCLotFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = QCLot

    stage_run = factory.SubFactory(StageRunFactory, kind="qc")
    policy = factory.SubFactory(_QCPolicyFactory)
    lot_size = 500
    sample_size = 50
    acceptance_number = 1

    class Params:
        overridden = factory.Trait(decision=LotDecision.OVERRIDDEN, override_reason="urgent release, checked by hand")


class ReviewItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReviewItem

    lot = factory.SubFactory(QCLotFactory)
    sequence = factory.Sequence(lambda n: n)
    record_key = factory.Sequence(lambda n: f"0:{n}")
    record = factory.LazyFunction(lambda: {"text": "a sampled record"})


class WorkerHeartbeatFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WorkerHeartbeat

    name = factory.Sequence(lambda n: f"celery@worker-{n}")
    last_seen_at = factory.LazyFunction(_tz.now)

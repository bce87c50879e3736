"""Helpers for the QC and publish tests: a run with stage runs, without going through the engine."""

from __future__ import annotations

from pipelines.tests.factories import PipelineFactory
from tasks.models import StageRun, Task, TaskRun


def make_run(pipeline=None, **pipeline_kwargs) -> TaskRun:
    """A run whose stage runs mirror the pipeline's stages (status left as created)."""
    pipeline = pipeline or PipelineFactory(**pipeline_kwargs)
    task = Task.objects.create(
        project=pipeline.project, pipeline=pipeline, name=f"task {pipeline.name}", input_dataset=pipeline.input_dataset
    )
    run = TaskRun.objects.create(task=task, project=pipeline.project, pipeline=pipeline, template=pipeline.template)
    for stage in pipeline.stages.order_by("position"):
        StageRun.objects.create(
            run=run, stage=stage, position=stage.position, key=stage.key, kind=stage.kind, config=stage.config
        )
    return run


def qc_stage(run: TaskRun) -> StageRun:
    return run.stage_runs.get(kind="qc")


def records(n: int, *, bad_every: int = 0) -> list[dict]:
    """n records; every `bad_every`-th one has a score below 0.5 (an automatic-check defect)."""
    out = []
    for i in range(n):
        bad = bad_every and i % bad_every == 0
        out.append({"id": i, "text": f"record number {i} with enough text", "score": 0.1 if bad else 0.9})
    return out

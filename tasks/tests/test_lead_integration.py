"""Seams between apps: the run action on the pipeline list and the active-runs KPI card."""

import pytest
from django.contrib import admin

from pipelines.models import Pipeline
from tasks.admin_actions import run_pipeline_action
from tasks.tests.factories import TaskRunFactory


def test_it_offers_run_on_the_pipeline_list():
    assert run_pipeline_action in admin.site._registry[Pipeline].actions


@pytest.mark.django_db
def test_it_counts_active_runs_in_the_dashboard_kpis(client):
    running = TaskRunFactory(running=True)
    TaskRunFactory(running=True, task__pipeline__project=running.project)
    TaskRunFactory(failed=True, task__pipeline__project=running.project)
    TaskRunFactory(running=True)  # another project
    body = client.get("/api/v1/metrics/kpis/", {"project": running.project_id}).json()
    kpis = body["results"]
    assert kpis["active_runs"]["value"] == 2
    assert client.get("/api/v1/metrics/kpis/").json()["results"]["active_runs"]["value"] == 3

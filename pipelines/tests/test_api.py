"""Pipelines API: CRUD through audited services (with template versioning), stage config validation,
QC policy validation, permissions and query budgets."""

import pytest
from rest_framework.test import APIClient

from dataflare_portal.core.models import AuditLogEntry
from pipelines.models import Pipeline, PipelineTemplate

from .factories import PipelineFactory, QCPolicyFactory

pytestmark = pytest.mark.django_db
API = "/api/v1/pipelines"


@pytest.fixture
def api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def test_creating_a_pipeline_and_stages_versions_the_template(api):
    base = PipelineFactory(stages=[])
    body = {
        "project": base.project.pk,
        "name": "api-made",
        "input_dataset": base.input_dataset.pk,
        "output_dataset": base.output_dataset.pk,
        "batch_size": 10,
    }
    created = api.post(f"{API}/pipelines/", body, format="json")
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    stage = api.post(
        f"{API}/stages/", {"pipeline": pk, "key": "read", "kind": "read", "position": 0, "config": {}}, format="json"
    )
    assert stage.status_code == 201, stage.content
    pipeline = Pipeline.objects.get(pk=pk)
    assert pipeline.template.version == 2 and pipeline.template.body["stages"][0]["id"] == "read"
    api.patch(f"{API}/stages/{stage.json()['id']}/", {"name": "Read it"}, format="json")
    assert PipelineTemplate.objects.filter(name="api-made").count() == 3
    api.delete(f"{API}/stages/{stage.json()['id']}/")
    pipeline.refresh_from_db()
    assert pipeline.template.version == 4 and pipeline.template.body["stages"] == []
    assert AuditLogEntry.objects.filter(object_type="pipelines.pipelinestage").count() == 3


def test_stage_config_is_validated_with_its_path(api):
    pipeline = PipelineFactory(stages=[])
    bad = api.post(
        f"{API}/stages/",
        {
            "pipeline": pipeline.pk,
            "key": "f",
            "kind": "filter",
            "position": 1,
            "config": {"rules": [{"type": "length", "min": "eight"}]},
        },
        format="json",
    )
    assert bad.status_code == 400
    assert "$.rules[0]" in bad.json()["error"]["fields"]["config"][0]
    unknown = api.post(
        f"{API}/stages/", {"pipeline": pipeline.pk, "key": "x", "kind": "warp", "position": 1}, format="json"
    )
    assert unknown.status_code == 400 and "kind" in unknown.json()["error"]["fields"]


def test_qc_policy_needs_a_preferred_aql_and_known_level(api):
    bad = api.post(f"{API}/qc-policies/", {"name": "odd", "aql": 3.0, "inspection_level": "IV"}, format="json")
    assert bad.status_code == 400
    assert set(bad.json()["error"]["fields"]) >= {"aql", "inspection_level"}
    rules = api.post(f"{API}/qc-policies/", {"name": "r", "rules": [{"type": "regex", "pattern": "("}]}, format="json")
    assert rules.status_code == 400 and "$.rules[0].pattern" in rules.json()["error"]["fields"]["rules"][0]
    ok = api.post(f"{API}/qc-policies/", {"name": "ok", "aql": 2.5, "inspection_level": "S-3"}, format="json")
    assert ok.status_code == 201


def test_list_endpoints_have_query_budgets(api, django_assert_max_num_queries):
    for _ in range(5):
        PipelineFactory()
    QCPolicyFactory()
    with django_assert_max_num_queries(8):
        assert len(api.get(f"{API}/pipelines/").json()["results"]) == 5
    with django_assert_max_num_queries(6):
        api.get(f"{API}/stages/")
    with django_assert_max_num_queries(6):
        api.get(f"{API}/templates/?brief=1")
    with django_assert_max_num_queries(6):
        api.get(f"{API}/qc-policies/")


def test_viewer_reads_operator_validates_admin_writes(local_auth, viewer_user, operator_user):
    pipeline = PipelineFactory()
    client = APIClient()
    client.force_authenticate(viewer_user)
    assert client.get(f"{API}/pipelines/").status_code == 200
    assert client.post(f"{API}/pipelines/{pipeline.pk}/validate/").status_code == 403
    client.force_authenticate(operator_user)
    assert client.post(f"{API}/pipelines/{pipeline.pk}/validate/").status_code == 200
    assert client.patch(f"{API}/pipelines/{pipeline.pk}/", {"name": "x"}, format="json").status_code == 403

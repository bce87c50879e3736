"""The model and execution system settings take effect where new pipelines and model configs start."""

import pytest
from rest_framework.test import APIClient

from dataflare_portal.core.config import config_set
from pipelines.models import ModelConfig, Pipeline
from pipelines.templates_io import template_export_body, template_import

from .factories import PipelineFactory, ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("size", [250, 5000])
def test_a_new_pipeline_and_an_import_without_batch_size_take_the_default(admin_user, size):
    config_set(key="batch_size_default", value=size, actor=admin_user)
    project = ProjectFactory()
    assert Pipeline(project=project, name="p").batch_size == size
    body = template_export_body(PipelineFactory(batch_size=7))
    del body["batch_size"]
    body["name"] = "imported"
    template_import(body=body, actor=admin_user)
    assert Pipeline.objects.get(name="imported").batch_size == size


@pytest.mark.parametrize(
    ("endpoint", "seconds", "ms"), [("10.0.0.7:9001", 2.5, 2500), ("models.local:8001", 45, 45000)]
)
def test_a_new_model_config_starts_with_the_default_endpoint_and_deadline(admin_user, endpoint, seconds, ms):
    config_set(key="model_endpoint_default", value=endpoint, actor=admin_user)
    config_set(key="model_timeout_seconds", value=seconds, actor=admin_user)
    mc = ModelConfig(name="m", model_name="quality")
    assert (mc.endpoint, mc.deadline_ms) == (endpoint, ms)
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.post("/api/v1/pipelines/model-configs/", {"name": "api-mc", "model_name": "quality"}, format="json")
    assert response.status_code == 201, response.content
    created = ModelConfig.objects.get(name="api-mc")
    assert (created.endpoint, created.deadline_ms) == (endpoint, ms)

"""Every model of the portal has a factory-boy factory that builds a valid, saved row."""

import importlib
import inspect

import factory
import pytest
from django.apps import apps

APPS = {
    "core": "dataflare_portal.core.tests.factories",
    "catalog": "catalog.tests.factories",
    "pipelines": "pipelines.tests.factories",
    "tasks": "tasks.tests.factories",
    "metrics": "metrics.tests.factories",
    "alerts": "alerts.tests.factories",
}


def _factories():
    found = {}
    for module_name in APPS.values():
        module = importlib.import_module(module_name)
        for _name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, factory.django.DjangoModelFactory) and obj._meta.model is not None:
                found.setdefault(obj._meta.model, obj)
    return found


def test_every_model_has_a_factory():
    factories = _factories()
    models = [m for label in APPS for m in apps.get_app_config(label).get_models()]
    missing = [m._meta.label for m in models if m not in factories]
    assert not missing, f"models without a factory: {missing}"


@pytest.mark.django_db
@pytest.mark.parametrize("label", sorted(APPS))
def test_each_factory_saves_a_valid_row(label):
    factories = _factories()
    for model in apps.get_app_config(label).get_models():
        obj = factories[model]()
        assert obj.pk is not None
        assert model.objects.filter(pk=obj.pk).exists()

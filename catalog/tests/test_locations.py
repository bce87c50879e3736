"""A dataset location holding {version} is a template: filled by the safe renderer, checked on save."""

import pytest
from django.core.exceptions import ValidationError

from catalog.tests.factories import DatasetFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "location",
    [
        "out/{version}/{run_id.__init__.__globals__[sys].modules[django.conf].settings.SECRET_KEY}.jsonl",
        "out/{version}/{secret}.jsonl",
        "out/{version!r}.jsonl",
        "out/{version:>99999}.jsonl",
        "out/{version[0]}.jsonl",
    ],
)
def test_an_unsafe_version_template_in_a_dataset_location_is_refused(location):
    dataset = DatasetFactory()
    dataset.location = location
    with pytest.raises(ValidationError) as info:
        dataset.full_clean()
    assert "location" in info.value.message_dict


def test_a_safe_version_template_is_accepted_and_rendered():
    from tasks.publish import version_location

    dataset = DatasetFactory(location="out/{dataset}/v{version:03d}.jsonl")
    dataset.full_clean()
    assert version_location(dataset, None, 12, "r-1", "jsonl") == f"out/{dataset.name}/v012.jsonl"

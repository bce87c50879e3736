"""Version diff by a key field: counts and samples, through the API and the admin; bad input names its field."""

import json

import pytest
from rest_framework.test import APIClient

from .factories import DatasetFactory, DatasetVersionFactory

pytestmark = pytest.mark.django_db

OLD = [{"id": i, "text": f"t{i}"} for i in range(100)]
# 90..99 removed, 100..119 added, every 10th of the rest changed, 5 unchanged-but-reordered.
NEW = [{"id": i, "text": f"t{i}" + ("!" if i % 10 == 0 else "")} for i in range(89, -1, -1)]
NEW += [{"id": i, "text": f"t{i}"} for i in range(100, 120)]


def _versions(file_root):
    (file_root / "out").mkdir(exist_ok=True)
    for name, records in (("v1", OLD), ("v2", NEW)):
        (file_root / "out" / f"d.{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    dataset = DatasetFactory(location="out/d.jsonl", options={"key": "id"})
    v1 = DatasetVersionFactory(dataset=dataset, version=1, location="out/d.v1.jsonl")
    v2 = DatasetVersionFactory(dataset=dataset, version=2, location="out/d.v2.jsonl")
    return v1, v2


@pytest.fixture
def api(viewer_user):
    client = APIClient()
    client.force_authenticate(viewer_user)
    return client


def test_the_api_counts_and_samples_by_key(api, file_root):
    v1, v2 = _versions(file_root)
    resp = api.get(f"/api/v1/catalog/dataset-versions/{v1.pk}/diff/", {"against": v2.pk, "sample": 3})
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert (body["added"], body["removed"], body["changed"], body["unchanged"]) == (20, 10, 9, 81)
    assert (body["left_records"], body["right_records"], body["key"]) == (100, 110, "id")
    assert [r["id"] for r in body["samples"]["added"]] == [100, 101, 102]
    assert [r["id"] for r in body["samples"]["removed"]] == [90, 91, 92]
    first = body["samples"]["changed"][0]
    assert first == {"key": 0, "before": {"id": 0, "text": "t0"}, "after": {"id": 0, "text": "t0!"}}
    # By another field: text (every changed text is both removed and added).
    resp = api.get(f"/api/v1/catalog/dataset-versions/{v1.pk}/diff/", {"against": v2.pk, "key": "text"})
    body = resp.json()
    assert (body["added"], body["removed"], body["changed"]) == (29, 19, 0)


@pytest.mark.parametrize(
    "params,field",
    [
        ({}, "against"),
        ({"against": 999999}, "against"),
        ({"against": "x"}, "against"),
        ({"key": "nope"}, "key"),
        ({"sample": 500}, "sample"),
    ],
)
def test_bad_diff_requests_name_the_field(api, file_root, params, field):
    v1, v2 = _versions(file_root)
    if "against" not in params and field != "against":
        params = {**params, "against": v2.pk}
    resp = api.get(f"/api/v1/catalog/dataset-versions/{v1.pk}/diff/", params)
    assert resp.status_code == 400
    assert field in json.dumps(resp.json()["error"]["fields"])


def test_a_building_version_is_not_compared(api, file_root):
    v1, _v2 = _versions(file_root)
    building = DatasetVersionFactory(dataset=v1.dataset, version=3, building=True, location="out/d.v3.jsonl")
    resp = api.get(f"/api/v1/catalog/dataset-versions/{v1.pk}/diff/", {"against": building.pk})
    assert resp.status_code == 400 and "against" in json.dumps(resp.json())


def test_the_admin_diff_page(client, admin_user, file_root):
    v1, v2 = _versions(file_root)
    client.force_login(admin_user)
    page = client.get(f"/catalog/datasetversion/{v1.pk}/change/").content.decode()
    assert f"/catalog/datasetversion/{v1.pk}/diff/" in page
    page = client.get(f"/catalog/datasetversion/{v1.pk}/diff/", {"against": v2.pk, "key": "id"}).content.decode()
    assert 'id="df-diff-added">20<' in page and 'id="df-diff-removed">10<' in page
    assert 'id="df-diff-changed">9<' in page
    page = client.get(f"/catalog/datasetversion/{v1.pk}/diff/", {"against": v2.pk, "key": "missing"})
    assert "has no field" in page.content.decode()
